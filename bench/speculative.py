"""Decode speed with speculative decoding vs without, same model, one process.

Three engines resident (speculation off / ngram / draft: the 270M drafting for itself), rounds
interleaved, tokens counted from each generation's usage. The draft column measures
correctness and acceptance on a CPU, not a speed-up: a model drafting for itself costs as much
per draft token as the target, so only a small model drafting for a large one (27B + 270M,
on a GPU) can gain. Workloads: (a) copy-heavy code edit, (b) grounded answer quoting passages
(the passages in the prompt, as the search hook puts them), (c) free prose; greedy and
temperature 0.7; one stream and four at once.

    .venv/bin/python bench/speculative.py [--tokens 128] [--rounds 2] [--draft-model PATH]

``--servers`` compares whole servers instead, all resident and answering in interleaved
rounds: ``gemma-local serve`` with ``--speculative off``, ``ngram`` and ``auto`` (the default),
and llama.cpp's own llama-server (bench/build_llama_server.sh: the same llama.cpp version)
plain and with each of its n-gram ``--spec-type``s, given the same Gemma prompt
(``--no-jinja --chat-template gemma``; the prompt token counts are checked to match). Streamed
chat requests, end of turn banned so every answer has the same length, decode tokens counted
from ``usage``:

    .venv/bin/python bench/speculative.py --servers [--tokens 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time

import httpx
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
    parser.add_argument("--servers", action="store_true", help="gemma-local serve vs llama-server (see above)")
    parser.add_argument(
        "--spec-types",
        default="ngram-simple,ngram-mod,ngram-map-k,ngram-map-k4v,ngram-cache",
        help="llama-server --spec-type values to run (comma-separated)",
    )
    args = parser.parse_args()
    if args.servers:
        compare_servers(args.tokens, args.rounds, [t for t in args.spec_types.split(",") if t])
        return
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


# --- whole servers: gemma-local vs llama-server ------------------------------------------------

#: <eos> and <end_of_turn> banned: every answer runs to max_tokens on every server.
BANNED = {"1": -100, "106": -100}


def stream(base: str, prompt: str, temperature: float, tokens: int, seed: int) -> dict:
    """One streamed chat answer: decode time (first to last content chunk) and usage."""
    body = {
        "model": "gemma-3-27b",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": temperature,
        "seed": seed,
        "logit_bias": BANNED,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = 0.0
    usage: dict = {}
    text: list[str] = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            usage = data.get("usage") or usage
            for choice in data.get("choices") or []:
                if content := choice.get("delta", {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    text.append(content)
    return {
        "start": started,
        "first": first,
        "end": last,
        "completion_tokens": usage.get("completion_tokens", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "text": "".join(text),
    }


def measure(base: str, prompt: str, temperature: float, tokens: int, streams: int, seed: int) -> dict:
    """Decode tokens/s: of the one answer, or of all ``streams`` together (wall clock)."""
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        answers = list(pool.map(lambda i: stream(base, prompt, temperature, tokens, seed + i), range(streams)))
    if streams == 1:
        a = answers[0]
        speed = (a["completion_tokens"] - 1) / max(a["end"] - a["first"], 1e-9)
    else:
        wall = max(a["end"] for a in answers) - min(a["start"] for a in answers)
        speed = sum(a["completion_tokens"] for a in answers) / wall
    return {"tok_s": speed, "prompt_tokens": answers[0]["prompt_tokens"], "text": answers[0]["text"]}


def compare_servers(tokens: int, rounds: int, spec_types: list[str]) -> None:
    from concurrency import Server, free_port, llama_server_process

    path, threads = str(model_path()), str(THREADS)
    ctx = 2048

    def ours(name: str, mode: str) -> Server:
        port = free_port()
        command = [sys.executable, "-m", "gemma_local", "serve", "--model", path, "--port", str(port)]
        command += ["--parallel", "4", "--ctx", str(ctx), "--threads", threads, "--speculative", mode]
        return Server(name, command, port)

    servers = [ours("ours_off", "off"), ours("ours_ngram", "ngram"), ours("ours_auto", "auto")]
    servers.append(llama_server_process(path, threads, free_port(), ctx, name="llama_server_plain"))
    for spec in spec_types:
        servers.append(
            llama_server_process(path, threads, free_port(), ctx, "--spec-type", spec, name=f"llama_server_{spec}")
        )
    rows = []
    try:
        for server in servers:
            server.start()
        for workload, prompt in WORKLOADS.items():
            for temperature in (0.0, 0.7):
                for streams in (1, 4):
                    speeds: dict[str, list[float]] = {s.name: [] for s in servers}
                    prompt_tokens: dict[str, int] = {}
                    texts: dict[str, str] = {}
                    for r in range(rounds):
                        for server in servers:
                            m = measure(server.base, prompt, temperature, tokens, streams, seed=100 * r)
                            speeds[server.name].append(m["tok_s"])
                            prompt_tokens[server.name] = m["prompt_tokens"]
                            texts[server.name] = m["text"]
                    row = row_of(workload, temperature, streams, speeds)
                    if len(set(prompt_tokens.values())) != 1:
                        row["prompt_tokens_differ"] = prompt_tokens
                    if temperature == 0.0:  # greedy: every server should write the same text
                        row["greedy_texts_differ"] = sorted(n for n, t in texts.items() if t != texts["ours_off"])
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for server in servers:
            server.stop()
    write_result(
        "speculative_servers",
        {
            "bench": "speculative --servers",
            "machine": machine(),
            "load_average": os.getloadavg(),
            "tokens": tokens,
            "rounds": rounds,
            "rows": rows,
        },
    )


def row_of(workload: str, temperature: float, streams: int, speeds: dict[str, list[float]]) -> dict:
    """Median tok/s per server, and ours over llama-server's best, as the median of per-round ratios."""
    llama = [name for name in speeds if name.startswith("llama_server")]
    rounds = len(speeds["ours_off"])
    best_per_round = [max(speeds[name][r] for name in llama) for r in range(rounds)]
    best = max(llama, key=lambda name: median(speeds[name]))
    row: dict = {"workload": workload, "temperature": temperature, "streams": streams}
    row |= {f"{name}_tok_s": round(median(v), 2) for name, v in speeds.items()}
    row["llama_server_best"] = best
    for mode in ("ours_auto", "ours_ngram"):
        row[f"{mode}_over_llama_best"] = round(
            median([speeds[mode][r] / max(best_per_round[r], 1e-9) for r in range(rounds)]), 3
        )
        row[f"{mode}_over_ours_off"] = round(
            median([speeds[mode][r] / max(speeds["ours_off"][r], 1e-9) for r in range(rounds)]), 3
        )
    return row


if __name__ == "__main__":
    main()
