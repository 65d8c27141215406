"""Generation speed with a JSON-schema grammar vs without, same prompt, same process.

Alternates an unconstrained run and a grammar-constrained run (a JSON schema converted by
``gemma_local.engine.json_schema``) for each round; reports median generation tokens/s of
each and their ratio (target >= 0.8). The schema is an unbounded list of records so that
both runs generate the full ``--tokens``. On a shared machine other processes only ever slow
a run down (llama.cpp's threads spin while a core is taken away), so the ratio of the best
rounds is reported next to the ratio of the medians, and so is the median time the sampler
itself takes per token with and without the grammar (the only work the grammar adds).

    .venv/bin/python bench/grammar_overhead.py [--tokens 128] [--rounds 3] [--temperature 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import THREADS, machine, median, model_path, write_result

from gemma_local.engine import ChatMessage, ContextParams, Engine, GenerationRequest, SamplingParams
from gemma_local.engine.json_schema import schema_to_grammar
from gemma_local.engine.sampling import SamplerChain

SCHEMA = {
    "type": "object",
    "properties": {
        "books": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "author": {"type": "string"},
                    "year": {"type": "integer", "minimum": 1400, "maximum": 2100},
                    "summary": {"type": "string"},
                },
                "required": ["title", "author", "year", "summary"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["books"],
    "additionalProperties": False,
}
PROMPT = "List famous books about the history of printing, with author, year and a summary, as JSON."


#: Seconds per sample() call, keyed by whether the request had a grammar.
SAMPLE_TIMES: dict[bool, list[float]] = {False: [], True: []}


def _timed_sample(original):
    def sample(self, ctx, batch_index):
        started = time.perf_counter()
        token = original(self, ctx, batch_index)
        SAMPLE_TIMES[self._grammar is not None].append(time.perf_counter() - started)
        return token

    return sample


def run(engine: Engine, grammar: str | None, tokens: int, temperature: float, seed: int) -> tuple[float, int, str]:
    request = GenerationRequest(
        messages=(ChatMessage.text("user", PROMPT),),
        sampling=SamplingParams(temperature=temperature, seed=seed, grammar=grammar),
        max_tokens=tokens,
    )
    result = engine.generate(request)
    n = result.usage.completion_tokens
    return result.timings.generation_tokens_per_s(n - 1), n, result.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()
    SamplerChain.sample = _timed_sample(SamplerChain.sample)
    started = time.perf_counter()
    grammar = schema_to_grammar(SCHEMA, strict=True)
    compile_s = time.perf_counter() - started
    engine = Engine(model_path(), ContextParams(n_ctx_per_seq=2048, n_seq=1, n_threads=THREADS))
    run(engine, None, 8, args.temperature, 0)  # warm up: page the weights in
    SAMPLE_TIMES[False].clear()
    plain, constrained, n_plain, n_constrained = [], [], [], []
    sample = ""
    for i in range(args.rounds):
        speed, n, _ = run(engine, None, args.tokens, args.temperature, i)
        plain.append(speed)
        n_plain.append(n)
        speed, n, sample = run(engine, grammar, args.tokens, args.temperature, i)
        constrained.append(speed)
        n_constrained.append(n)
        print(
            f"round {i + 1}: plain {plain[-1]:.1f} tok/s ({n_plain[-1]} tokens), "
            f"grammar {constrained[-1]:.1f} tok/s ({n_constrained[-1]} tokens)",
            flush=True,
        )
    engine.close()
    ratio = median(constrained) / median(plain) if median(plain) else 0.0
    best_ratio = max(constrained) / max(plain) if plain and max(plain) else 0.0
    write_result(
        "grammar_overhead",
        {
            "bench": "grammar_overhead",
            "machine": machine(),
            "tokens": args.tokens,
            "rounds": args.rounds,
            "temperature": args.temperature,
            "schema_to_grammar_s": round(compile_s, 4),
            "plain_tokens_per_s": round(median(plain), 2),
            "grammar_tokens_per_s": round(median(constrained), 2),
            "plain_tokens_per_s_best": round(max(plain), 2),
            "grammar_tokens_per_s_best": round(max(constrained), 2),
            "plain_tokens": n_plain,
            "grammar_tokens": n_constrained,
            "ratio": round(ratio, 3),
            "ratio_best": round(best_ratio, 3),
            "sampler_ms_per_token_plain": round(1000 * statistics.median(SAMPLE_TIMES[False]), 3),
            "sampler_ms_per_token_grammar": round(1000 * statistics.median(SAMPLE_TIMES[True]), 3),
            "sampler_ms_per_token_grammar_mean": round(1000 * statistics.fmean(SAMPLE_TIMES[True]), 3),
            "target": 0.8,
            "grammar_output_start": sample[:120],
        },
    )


if __name__ == "__main__":
    main()
