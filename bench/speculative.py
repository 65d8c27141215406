"""Decode speed with speculative decoding vs without, same model, one process.

Three engines resident (speculation off / ngram / draft: the 270M drafting for itself), rounds
interleaved, tokens counted from each generation's usage. The draft column measures
correctness and acceptance on a CPU, not a speed-up: a model drafting for itself costs as much
per draft token as the target, so only a small model drafting for a large one (27B + 270M,
on a GPU) can gain. Workloads: (a) copy-heavy code edit, (b) grounded answer quoting passages
(the passages in the prompt, as the search hook puts them), (c) free prose; greedy and
temperature 0.7; one stream and four at once.

    .venv/bin/python bench/speculative.py [--tokens 128] [--rounds 2] [--draft-model PATH]

llama-server's rows (plain and each ``--spec-type``) are not measured here: see bench/README.md.
"""

from __future__ import annotations

import argparse
import time

from common import THREADS, machine, median, model_path, write_result

from gemma_local.engine import ChatMessage, ContextParams, Engine, GenerationRequest, SamplingParams, SpeculationPolicy

CODE = "\n".join(
    f"def load_{name}(path, strict=False):\n"
    f"    with open(path) as handle:\n"
    f"        data = handle.read()\n"
    f"    if strict and not data:\n"
    f"        raise ValueError('empty {name} file')\n"
    f"    return parse_{name}(data)\n"
    for name in ("users", "orders", "items", "prices", "stock")
)
PASSAGES = "\n".join(
    f"[{i}] {text}"
    for i, text in enumerate(
        (
            "The lighthouse at Cape Hatteras was moved 2,900 feet inland in 1999 to protect it from erosion.",
            "Its black and white spiral stripes make it one of the most recognised lighthouses in America.",
            "The original 1803 tower was replaced in 1870 by the current brick structure, 198 feet tall.",
        ),
        start=1,
    )
)
WORKLOADS = {
    "code": f"Rewrite this code, renaming the parameter `path` to `file_path`. Output only the code.\n\n{CODE}",
    "grounded": f"Sources:\n{PASSAGES}\n\nQuoting the sources word for word with their numbers, "
    "tell me about the Cape Hatteras lighthouse.",
    "prose": "Write a story about a fox who learns to sail.",
}


def request(prompt: str, temperature: float, tokens: int, seed: int) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage.text("user", prompt),),
        sampling=SamplingParams(temperature=temperature, seed=seed),
        max_tokens=tokens,
    )


def run(engine: Engine, req: GenerationRequest, streams: int) -> tuple[float, int, int]:
    """Generated tokens per second of decode (all streams together), drafted, accepted."""
    started = time.perf_counter()
    handles = [engine.submit(req) for _ in range(streams)]
    results = [h.result() for h in handles]
    wall = time.perf_counter() - started
    tokens = sum(r.usage.completion_tokens for r in results)
    decode_s = max(r.timings.generation_s for r in results) if streams == 1 else wall
    return tokens / decode_s, sum(r.usage.draft_tokens for r in results), sum(r.usage.accepted_tokens for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--draft-model", help="GGUF of the draft model (default: the model itself)")
    args = parser.parse_args()
    params = ContextParams(n_ctx_per_seq=2048, n_seq=4, n_threads=THREADS)
    draft_model = args.draft_model or str(model_path())
    engines = {
        "off": Engine(model_path(), params),
        "ngram": Engine(model_path(), params, speculation=SpeculationPolicy(mode="ngram", draft_max=8)),
        "draft": Engine(
            model_path(), params, speculation=SpeculationPolicy(mode="draft", draft_max=8, draft_model=draft_model)
        ),
    }
    rows = []
    for workload, prompt in WORKLOADS.items():
        for temperature in (0.0, 0.7):
            for streams in (1, 4):
                speeds: dict[str, list[float]] = {name: [] for name in engines}
                drafted = dict.fromkeys(engines, 0)
                accepted = dict.fromkeys(engines, 0)
                for r in range(args.rounds):
                    for name, engine in engines.items():
                        speed, d, a = run(engine, request(prompt, temperature, args.tokens, seed=r), streams)
                        speeds[name].append(speed)
                        drafted[name] += d
                        accepted[name] += a
                off, ngram, draft = (median(speeds[name]) for name in ("off", "ngram", "draft"))
                rows.append(
                    {
                        "workload": workload,
                        "temperature": temperature,
                        "streams": streams,
                        "off_tok_s": round(off, 2),
                        "ngram_tok_s": round(ngram, 2),
                        "ngram_over_off": round(ngram / off, 3),
                        "acceptance": round(accepted["ngram"] / drafted["ngram"], 3) if drafted["ngram"] else None,
                        "drafted": drafted["ngram"],
                        "draft_tok_s": round(draft, 2),
                        "draft_over_off": round(draft / off, 3),
                        "draft_acceptance": (
                            round(accepted["draft"] / drafted["draft"], 3) if drafted["draft"] else None
                        ),
                        "draft_drafted": drafted["draft"],
                    }
                )
                print(rows[-1], flush=True)
    for engine in engines.values():
        engine.close()
    write_result(
        "speculative",
        {"bench": "speculative", "machine": machine(), "tokens": args.tokens, "draft_model": draft_model, "rows": rows},
    )


if __name__ == "__main__":
    main()
