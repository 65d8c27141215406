"""Is a prompt's next-token distribution bit-identical whatever the cache held before it?

One ~1,700-token prompt, greedy, one output token with the top-20 logprobs, on the embedded
270M (4 slots of 2,048 tokens, default checkpoints: every 1,024 prompt tokens and at the end).
The reference is the prompt computed cold on a fresh engine; every other case computes it
after the cache was put in some state (see CASES) and is compared with it: bit-identical top-20
logprobs or not, the largest difference, whether the top token is the same, and its margin
over the second.

    BENCH_THREADS=1 .venv/bin/python bench/logit_exactness.py [--ring]

``--ring`` runs only the restore check behind the table's restore rows: a 2,600-token prompt,
checkpoints every 512 tokens, restored at 1,024, 1,536 and 2,048.

Not a speed bench: the numbers do not depend on load (it takes a few minutes on 2 busy cores).
"""

from __future__ import annotations

import sys
import time

from common import THREADS, machine, model_path, write_result

from gemma_local.engine import CheckpointPolicy, ContextParams, Engine, GenerationRequest, SamplingParams
from gemma_local.engine.types import GenerationResult

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu")
#: The prompt's lines and unrelated filler; the cases build earlier prompts out of both.
LINES = [f"def f_{i}(x):\n    return x * {i} + len('{WORDS[i % len(WORDS)]}')\n" for i in range(120)]
OTHER = [f"line {i}: the {WORDS[i * 7 % len(WORDS)]} of it all\n" for i in range(400)]


def ask(engine: Engine, text: str, max_tokens: int = 1) -> GenerationResult:
    request = GenerationRequest(
        prompt=text, sampling=SamplingParams(temperature=0.0), max_tokens=max_tokens, logprobs=20
    )
    return engine.generate(request)


def head(engine: Engine, text: str, n_tokens: int) -> str:
    """The longest run of whole LINES of ``text`` within its first ``n_tokens`` tokens."""
    lines = text.splitlines(keepends=True)
    out = ""
    for line in lines:
        if len(engine.prompt_tokens(GenerationRequest(prompt=out + line))) > n_tokens:
            break
        out += line
    return out


def filler(n_lines: int, start: int = 0) -> str:
    return "".join(OTHER[start : start + n_lines])


def compare(name: str, ref: GenerationResult, got: GenerationResult) -> dict:
    a = {t: lp for t, lp, _ in ref.logprobs[0].top}
    b = {t: lp for t, lp, _ in got.logprobs[0].top}
    common = a.keys() & b.keys()
    diff = max(abs(a[t] - b[t]) for t in common)
    top = got.logprobs[0].top
    row = {
        "case": name,
        "identical": ref.logprobs[0].top == got.logprobs[0].top,
        "max_abs_diff": round(diff, 4),
        "same_top": top[0][0] == ref.logprobs[0].top[0][0],
        "margin": round(top[0][1] - top[1][1], 3),
        "cached": got.usage.cached_tokens,
    }
    print(
        f"{name:62s} {'BIT-IDENTICAL' if row['identical'] else 'differs':13s} max|d|={row['max_abs_diff']:<7} "
        f"same top={row['same_top']} margin={row['margin']} cached={row['cached']}",
        flush=True,
    )
    return row


def main() -> None:
    params = ContextParams(n_ctx_per_seq=2048, n_seq=4, n_threads=THREADS)
    fresh = Engine(model_path(), params)
    prompt = head(fresh, "".join(LINES), 1700)
    n = len(fresh.prompt_tokens(GenerationRequest(prompt=prompt)))
    ref = ask(fresh, prompt)
    fresh.close()
    print(
        f"prompt: {n} tokens; reference: computed cold on a fresh engine; top-2 margin "
        f"{ref.logprobs[0].top[0][1] - ref.logprobs[0].top[1][1]:.3f}",
        flush=True,
    )

    engine = Engine(model_path(), params)

    def after(*earlier: str) -> GenerationResult:
        engine.clear_prefix_cache()
        for text in earlier:
            ask(engine, text)
        return ask(engine, prompt)

    rows = [
        compare("cold, after clear_prefix_cache on a used engine", ref, after(filler(100))),
        compare("same prompt again (only its last token recomputed)", ref, after(prompt)),
        compare(
            "earlier prompt shares all but ~40 tokens (one small chunk)",
            ref,
            after(head(engine, prompt, n - 40) + filler(8)),
        ),
        compare("earlier prompt shares all but ~200 tokens", ref, after(head(engine, prompt, n - 200) + filler(8))),
        compare("earlier short prompt shares its first ~12 tokens", ref, after(head(engine, prompt, 14) + filler(2))),
        compare("checkpoint restored, copied into a free slot", ref, after(head(engine, prompt, 1200) + filler(60))),
        compare(
            "checkpoint restored in place (the other slots hold more)",
            ref,
            after(*(filler(110, 100 * i) for i in range(3)), head(engine, prompt, 1100) + filler(65)),
        ),
        compare(
            "prefix copied from another slot (seq_cp, in its window)",
            ref,
            after(head(engine, prompt, 1500) + filler(30)),
        ),
    ]

    # Cold, sharing its steps with another request: a prompt chunk, then a generation.
    engine.clear_prefix_cache()
    other = engine.submit(GenerationRequest(prompt=filler(30), max_tokens=1))
    rows.append(compare("cold, another prompt's chunk in the same steps", ref, ask(engine, prompt)))
    other.result()
    engine.clear_prefix_cache()
    other = engine.submit(GenerationRequest(prompt=filler(2), max_tokens=300, sampling=SamplingParams(temperature=0)))
    time.sleep(1.0)
    rows.append(compare("cold, another request generating in the same steps", ref, ask(engine, prompt)))
    other.cancel()
    other.result()
    engine.close()
    write_result("logit_exactness", {"machine": machine(), "prompt_tokens": n, "cases": rows})


def ring() -> None:
    """Restores whose window a cold run holds at the start of the sliding-window ring, and others.

    llama.cpp keeps a slot's sliding-window KV in a ring of n_swa + n_ubatch cells (1,024 here);
    a prompt processed alone in 512-token chunks puts position q in cell q mod 1,024, and a
    restored window goes to the ring's first cells. So a checkpoint at 1,536 (window 1,024-1,535,
    cells 0-511 either way) should restore bit-identically and ones at 1,024 or 2,048 not.
    """
    params = ContextParams(n_ctx_per_seq=4096, n_seq=2, n_threads=THREADS)
    policy = CheckpointPolicy(checkpoint_every=512)
    fresh = Engine(model_path(), params, checkpoints=policy)
    prompt = head(fresh, "".join(LINES + [line.replace("line", "row") for line in OTHER[:100]]), 2600)
    ref = ask(fresh, prompt)
    fresh.close()
    engine = Engine(model_path(), params, checkpoints=policy)
    for edit_at in (1560, 1050, 2080):
        engine.clear_prefix_cache()
        ask(engine, head(engine, prompt, edit_at) + filler(100))
        compare(f"edit at ~{edit_at}: checkpoint restored", ref, ask(engine, prompt))
    engine.close()


if __name__ == "__main__":
    ring() if "--ring" in sys.argv else main()
