"""Our engine vs plain llama-cpp-python ``Llama`` on the same model, settings and prompt.

Both run in this one process, alternating, so machine noise hits both alike. Reported:
prompt-processing and generation tokens/s for each and the ratio ours / plain.

    .venv/bin/python bench/engine_vs_llama.py [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from common import PROMPT, THREADS, machine, median, model_path, write_result

from gemma_local.engine import ContextParams, Engine, Finished, GenerationRequest, SamplingParams


def run_ours(engine: Engine, n_tokens: int) -> tuple[float, float]:
    request = GenerationRequest(
        prompt=PROMPT, sampling=SamplingParams(temperature=0.0), max_tokens=n_tokens, logprobs=None
    )
    final = next(e for e in engine.submit(request) if isinstance(e, Finished))
    # The prefix cache keeps this prompt between rounds; clear it so every round prefills cold.
    engine.clear_prefix_cache()
    u, t = final.usage, final.timings
    gen_tokens = u.completion_tokens - 1  # the first token comes out of the prompt pass
    return u.prompt_tokens / t.prompt_s, gen_tokens / max(t.generation_s, 1e-9)


def run_plain(llm, n_tokens: int) -> tuple[float, float]:
    tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llm.reset()
    t0 = time.perf_counter()
    n = 0
    t_first = 0.0
    for _token in llm.generate(tokens, temp=0.0, reset=True):
        n += 1
        if n == 1:
            t_first = time.perf_counter()
        if n >= n_tokens:
            break
    t_end = time.perf_counter()
    return len(tokens) / (t_first - t0), (n - 1) / (t_end - t_first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from llama_cpp import Llama

    path = model_path()
    llm = Llama(
        str(path),
        n_ctx=2048,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        flash_attn=True,
        swa_full=False,
        verbose=False,
    )
    engine = Engine(path, ContextParams(n_ctx_per_seq=2048, n_seq=1, n_threads=THREADS, flash_attn="on"))
    ours_pp, ours_tg, plain_pp, plain_tg = [], [], [], []
    run_plain(llm, 8)  # warm-up both
    run_ours(engine, 8)
    for _ in range(args.rounds):
        pp, tg = run_plain(llm, args.tokens)
        plain_pp.append(pp)
        plain_tg.append(tg)
        pp, tg = run_ours(engine, args.tokens)
        ours_pp.append(pp)
        ours_tg.append(tg)
    engine.close()
    result = {
        "bench": "engine_vs_llama",
        "model": path.name,
        "machine": machine(),
        "tokens": args.tokens,
        "rounds": args.rounds,
        "plain_llama_cpp_python": {"prompt_tok_s": round(median(plain_pp), 1), "gen_tok_s": round(median(plain_tg), 1)},
        "gemma_local_engine": {"prompt_tok_s": round(median(ours_pp), 1), "gen_tok_s": round(median(ours_tg), 1)},
        "ratio_prompt": round(median(ours_pp) / median(plain_pp), 3),
        "ratio_generation": round(median(ours_tg) / median(plain_tg), 3),
    }
    write_result("engine_vs_llama", result)


if __name__ == "__main__":
    main()
