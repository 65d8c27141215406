"""Prefix reuse when a long conversation is edited far back, and across conversations.

Cases (issue 19): a cached conversation of ~N tokens (default 8K) edited 600, 2,000 and 6,000
tokens before its end; two conversations sharing a ~N/2-token system prompt. For each: cached
tokens vs the common prefix, and time to first token vs the same prompt computed cold. Then
decode speed with checkpoints on vs off (two engines resident, rounds interleaved). After a
restart (the disk prefix cache, part 3): the conversation is cached by one engine, which is
closed; a new engine (a restarted server) gets the conversation plus one turn, or a second
conversation sharing its first half, each right after its start.

    .venv/bin/python bench/prefix_edits.py [--tokens 8192] [--rounds 2] [--restart-only] [--skip-llama-server]

llama.cpp's own llama-server (bench/build_llama_server.sh: the same llama.cpp version, its
defaults otherwise: context checkpoints, slot choice by prompt similarity) gets the very same
requests in the same order, side by side: the prompt token ids our engine renders, sent to its
``/completion`` (so both sides see identical prompts), with ``--parallel 4`` and the same
context per slot. Its cached tokens and prompt time come from its ``timings``; cold is the same
request with ``cache_prompt: false``.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import THREADS, machine, median, model_path, write_result

from gemma_local.engine import (
    ChatMessage,
    CheckpointPolicy,
    ContextParams,
    DiskCachePolicy,
    Engine,
    GenerationRequest,
    SamplingParams,
)
from gemma_local.engine.kv_slots import common_prefix_len

GREEDY = SamplingParams(temperature=0.0)


def note(i: int) -> str:
    return f"Record {i}: the shipment {i} left port {i % 17} carrying {i * 7 % 13} crates of tea."


def conversation(notes: list[str], question: str = "Which shipments carried 5 crates?") -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage.text("system", "\n".join(notes)), ChatMessage.text("user", question)),
        sampling=GREEDY,
        max_tokens=1,
    )


def notes_for(engine: Engine, n_tokens: int) -> list[str]:
    per = len(engine.prompt_tokens(conversation([note(i) for i in range(100)]))) / 100
    notes = [note(i) for i in range(int(n_tokens / per) - 2)]
    while len(engine.prompt_tokens(conversation(notes))) < n_tokens:
        notes.append(note(len(notes)))
    return notes


def edited_at(engine: Engine, notes: list[str], before_end: int) -> tuple[GenerationRequest, int]:
    """The conversation with the note about ``before_end`` tokens before its end rewritten."""
    base = engine.prompt_tokens(conversation(notes))
    best = None
    for i in range(len(notes)):
        changed = list(notes)
        changed[i] = f"Record {i}: (cleared)"
        request = conversation(changed)
        d = common_prefix_len(base, engine.prompt_tokens(request))
        if best is None or abs((len(base) - d) - before_end) < abs((len(base) - best[1]) - before_end):
            best = (request, d)
        if len(base) - d < before_end:
            break
    assert best is not None
    return best


def ttft(engine: Engine, request: GenerationRequest) -> tuple[float, int, int]:
    result = engine.generate(request)
    return result.timings.time_to_first_token_s, result.usage.cached_tokens, result.usage.prompt_tokens


class LlamaServer:
    """llama-server answering the same prompts (as token ids), resident for the whole run."""

    def __init__(self, n_ctx_per_seq: int) -> None:
        from concurrency import free_port, llama_server_process

        self.server = llama_server_process(
            str(model_path()), str(THREADS), free_port(), n_ctx_per_seq, name="llama_server"
        )
        atexit.register(self.close)  # a run that fails half-way leaves no server behind
        self.server.start()

    def send(self, tokens: list[int], *, cold: bool = False) -> tuple[float, int, int]:
        """(prompt time s, cached tokens, prompt tokens) for one greedy one-token answer
        (``cold``: with its prompt cache off for this request, so nothing is reused)."""
        body = {"prompt": tokens, "n_predict": 1, "temperature": 0, "cache_prompt": not cold}
        r = httpx.post(f"{self.server.base}/completion", json=body, timeout=3600)
        r.raise_for_status()
        timings = r.json()["timings"]
        return timings["prompt_ms"] / 1000, timings["cache_n"], timings["cache_n"] + timings["prompt_n"]

    def close(self) -> None:
        self.server.stop()


def decode_speed(engines: dict[str, Engine], rounds: int) -> dict[str, float]:
    request = GenerationRequest(
        messages=(ChatMessage.text("user", "Write a long story about a lighthouse keeper."),),
        sampling=GREEDY,
        max_tokens=96,
    )
    speeds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            result = engine.generate(request)
            speeds[name].append(result.usage.completion_tokens / result.timings.generation_s)
    return {name: round(median(v), 2) for name, v in speeds.items()}


def decode_only(engine: Engine, params: ContextParams, cached: GenerationRequest, rounds: int) -> None:
    """Decode speed, checkpoints on vs off, each engine holding the same cached prompt."""
    plain = Engine(model_path(), params, checkpoints=CheckpointPolicy(max_checkpoints=0))
    for e in (engine, plain):
        e.generate(cached)
    speeds = decode_speed({"checkpoints_on": engine, "checkpoints_off": plain}, rounds)
    plain.close()
    engine.close()
    write_result(
        "prefix_edits_decode",
        {
            "bench": "prefix_edits --decode-only",
            "machine": machine(),
            "decode_tok_s": speeds,
            "decode_on_over_off": round(speeds["checkpoints_on"] / speeds["checkpoints_off"], 3),
        },
    )


def after_restart(
    engine: Engine, params: ContextParams, checkpoints: CheckpointPolicy, notes: list[str], base: GenerationRequest
) -> list[dict[str, object]]:
    """Rows for requests that a new engine gets right after its start, with the disk cache on.

    ``engine`` (no disk cache) computes each request cold for the comparison.
    """
    root = Path(tempfile.mkdtemp(prefix="prefix-disk-"))
    policy = DiskCachePolicy(root=root)
    try:
        first = Engine(model_path(), params, checkpoints=checkpoints, prefix_disk=policy)
        answer = first.generate(base)
        first.close()  # the file is written before close() returns
        saved = sorted(root.glob("*/*.gpc"))
        turn = (ChatMessage.text("assistant", answer.text), ChatMessage.text("user", "And 7 crates?"))
        cases = {
            "after a restart: the conversation plus one turn": GenerationRequest(
                messages=base.messages + turn, sampling=GREEDY, max_tokens=1
            ),
            "after a restart: a conversation sharing its first half": conversation(
                notes[: len(notes) // 2], "List port 5."
            ),
        }
        rows = []
        for case, request in cases.items():
            started = time.perf_counter()
            restarted = Engine(model_path(), params, checkpoints=checkpoints, prefix_disk=policy)
            load_s = time.perf_counter() - started
            warm_s, cached, prompt = ttft(restarted, request)
            restarted.close()
            engine.clear_prefix_cache()
            cold_s, _, _ = ttft(engine, request)
            common = common_prefix_len(engine.prompt_tokens(base), engine.prompt_tokens(request))
            rows.append(
                {
                    "case": case,
                    "prompt": prompt,
                    "common": common,
                    "cached": cached,
                    "cached_of_common": round(cached / common, 3),
                    "warm_ttft_s": round(warm_s, 3),
                    "cold_ttft_s": round(cold_s, 3),
                    "warm_over_cold": round(warm_s / cold_s, 3),
                    "engine_start_s": round(load_s, 2),
                    "file_bytes": sum(p.stat().st_size for p in saved),
                }
            )
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=8192, help="length of the cached conversation")
    parser.add_argument("--rounds", type=int, default=2, help="decode-speed rounds")
    parser.add_argument("--decode-only", action="store_true", help="only the decode-speed comparison")
    parser.add_argument("--skip-llama-server", action="store_true", help="no llama-server side by side")
    parser.add_argument("--restart-only", action="store_true", help="only the after-a-restart rows (disk cache)")
    parser.add_argument(
        "--checkpoint-every", type=int, default=None, help="checkpoint spacing (default: the engine's, the window)"
    )
    parser.add_argument(
        "--checkpoints", type=int, default=32, help="checkpoints per slot (default: what serve plans for the 270M)"
    )
    args = parser.parse_args()
    params = ContextParams(n_ctx_per_seq=args.tokens + 1024, n_seq=4, n_threads=THREADS)
    checkpoints = CheckpointPolicy(max_checkpoints=args.checkpoints, checkpoint_every=args.checkpoint_every)
    engine = Engine(model_path(), params, checkpoints=checkpoints)
    every = engine._scheduler.cache.every
    notes = notes_for(engine, args.tokens)
    base = conversation(notes)
    n_base = len(engine.prompt_tokens(base))
    rows = []
    started = time.perf_counter()

    if args.decode_only:
        decode_only(engine, params, base, args.rounds)
        return
    if args.restart_only:
        rows = after_restart(engine, params, checkpoints, notes, base)
        engine.close()
        write_result(
            "prefix_edits_restart",
            {
                "bench": "prefix_edits --restart-only",
                "machine": machine(),
                "conversation_tokens": n_base,
                "checkpoint_every": every,
                "cases": rows,
            },
        )
        return
    llama = None if args.skip_llama_server else LlamaServer(params.n_ctx_per_seq)

    def on_llama(row: dict, *requests: GenerationRequest) -> None:
        """Send llama-server the same requests; the last one's figures go in the row."""
        if llama is None:
            return
        for request in requests:
            warm_s, cached, prompt = llama.send(engine.prompt_tokens(request))
        row |= {"llama_server_cached": cached, "llama_server_warm_s": warm_s, "llama_server_prompt": prompt}

    engine.generate(base)  # the cached conversation
    base_row: dict = {}
    on_llama(base_row, base)
    for before_end in (600, 2000, 6000):
        if before_end >= n_base:
            continue
        request, common = edited_at(engine, notes, before_end)
        warm_s, cached, prompt = ttft(engine, request)
        rows.append(
            {
                "case": f"edit {before_end} before end",
                "prompt": prompt,
                "common": common,
                "cached": cached,
                "warm_ttft_s": warm_s,
                "request": request,
            }
        )
        on_llama(rows[-1], request)
    half = notes[: len(notes) // 2]
    shared_a, shared_b = conversation(half, "Which shipment left port 3 first?"), conversation(half, "List port 5.")
    engine.generate(shared_a)
    warm_s, cached, prompt = ttft(engine, shared_b)
    shared_row: dict = {}
    on_llama(shared_row, shared_a, shared_b)
    common = common_prefix_len(engine.prompt_tokens(shared_a), engine.prompt_tokens(shared_b))
    rows.append(
        {
            "case": "second conversation, shared system prompt",
            "prompt": prompt,
            "common": common,
            "cached": cached,
            "warm_ttft_s": warm_s,
            "request": shared_b,
        }
        | shared_row
    )
    for row in rows:
        engine.clear_prefix_cache()
        request = row.pop("request")
        row["cold_ttft_s"], _, _ = ttft(engine, request)
        if llama is not None:
            cold_s, _, _ = llama.send(engine.prompt_tokens(request), cold=True)
            row["llama_server_cached_of_common"] = round(row["llama_server_cached"] / row["common"], 3)
            row["llama_server_warm_over_cold"] = round(row.pop("llama_server_warm_s") / cold_s, 3)
            if row.pop("llama_server_prompt") != row["prompt"]:
                print(f"warning: llama-server counted other prompt tokens in {row['case']}", file=sys.stderr)
        row["cached_of_common"] = round(row["cached"] / row["common"], 3)
        row["warm_over_cold"] = round(row["warm_ttft_s"] / row["cold_ttft_s"], 3)
        row["warm_ttft_s"] = round(row["warm_ttft_s"], 3)
        row["cold_ttft_s"] = round(row["cold_ttft_s"], 3)
    rows += after_restart(engine, params, checkpoints, notes, base)
    bench_s = time.perf_counter() - started
    if llama is not None:
        llama.close()

    plain = Engine(model_path(), params, checkpoints=CheckpointPolicy(max_checkpoints=0))
    # The same cache state on both: an idle slot holding a long prompt widens every slot's
    # attention (llama.cpp sizes it by the fullest KV stream), checkpoints or not.
    plain.generate(shared_b)
    speeds = decode_speed({"checkpoints_on": engine, "checkpoints_off": plain}, args.rounds)
    plain.close()
    engine.close()
    result = {
        "bench": "prefix_edits",
        "machine": machine(),
        "conversation_tokens": n_base,
        "checkpoint_every": every,
        "cases": rows,
        "decode_tok_s": speeds,
        "decode_on_over_off": round(speeds["checkpoints_on"] / speeds["checkpoints_off"], 3),
        "cases_wall_s": round(bench_s, 1),
    }
    write_result("prefix_edits", result)


if __name__ == "__main__":
    main()
