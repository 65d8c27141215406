"""Time to first token of turn 5 of a multi-turn chat: prefix cache warm vs cold.

Each turn re-sends the whole conversation (as every chat client does). With the prefix cache
the engine only computes the new user message; cold, it recomputes the whole history.

    .venv/bin/python bench/prefix_cache.py [--turns 5] [--rounds 3]
"""

from __future__ import annotations

import argparse

from common import THREADS, machine, median, model_path, write_result

from gemma_local.engine import ChatMessage, ContextParams, Engine, GenerationRequest, SamplingParams

SYSTEM = " ".join(f"Guideline {i}: be accurate, cite facts, and keep answers short ({i})." for i in range(40))
QUESTIONS = [
    "Tell me about the printing press.",
    "Who was Gutenberg?",
    "What did the press change in science?",
    "And in religion?",
    "Summarise our conversation.",
]


def conversation_turn(engine: Engine, history: list[ChatMessage], question: str) -> tuple[GenerationRequest, str]:
    history.append(ChatMessage.text("user", question))
    request = GenerationRequest(messages=tuple(history), sampling=SamplingParams(temperature=0.0), max_tokens=48)
    answer = engine.generate(request).text
    history.append(ChatMessage.text("assistant", answer))
    return request, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = Engine(model_path(), ContextParams(n_ctx_per_seq=4096, n_seq=2, n_threads=THREADS))
    warm_ttft, cold_ttft, prompt_tokens, cached = [], [], 0, 0
    for _ in range(args.rounds):
        engine.clear_prefix_cache()
        history = [ChatMessage.text("system", SYSTEM)]
        for question in QUESTIONS[: args.turns - 1]:
            conversation_turn(engine, history, question)
        last = GenerationRequest(
            messages=(*history, ChatMessage.text("user", QUESTIONS[args.turns - 1])),
            sampling=SamplingParams(temperature=0.0),
            max_tokens=1,
        )
        warm = engine.generate(last)
        engine.clear_prefix_cache()
        cold = engine.generate(last)
        warm_ttft.append(warm.timings.time_to_first_token_s)
        cold_ttft.append(cold.timings.time_to_first_token_s)
        prompt_tokens, cached = warm.usage.prompt_tokens, warm.usage.cached_tokens
    engine.close()
    result = {
        "bench": "prefix_cache",
        "machine": machine(),
        "turn": args.turns,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached,
        "ttft_cold_s": round(median(cold_ttft), 4),
        "ttft_warm_s": round(median(warm_ttft), 4),
        "warm_over_cold": round(median(warm_ttft) / median(cold_ttft), 3),
    }
    write_result("prefix_cache", result)


if __name__ == "__main__":
    main()
