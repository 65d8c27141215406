"""Soak: many concurrent streaming clients for minutes, mixing the APIs; nothing may leak or fail.

Starts ``python -m gemma_local serve`` on a loopback port (fresh GEMMA_LOCAL_HOME), then runs
``--clients`` threads for ``--duration`` seconds. Each client loops: pick an API (Chat
Completions, Responses, Anthropic Messages: those the server documents), a short or long
prompt and an output length, stream the answer, and, for a share of requests, hang up
mid-stream. Reported:

- requests served (a complete stream), hung up on purpose, and errors (target 0): a non-200,
  an error event, a stream without its final event, a transport failure;
- time to first token (first text event), p50 and p99, by API;
- the server process at start (after warm-up) and end (idle again): RSS, threads, open file
  descriptors, and the engine's active/queued requests. Bounds: RSS growth ≤ ``--max-rss-growth-mib``,
  threads ≤ start + 4, fds ≤ start + 8, nothing active or queued; a leak of slots, KV sequences,
  threads or files shows up here.

Finally the server is stopped with SIGTERM and must exit 0. Exit status 1 if any bound or the
error target is missed.

    .venv/bin/python bench/soak.py [--duration 120] [--clients 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import THREADS, machine, write_result

HERE = Path(__file__).resolve().parent
MODEL = "gemma-3-27b"
SHORT_PROMPTS = [
    "Write a short poem about the sea.",
    "List three uses of copper.",
    "What is a lighthouse for?",
    "Describe a market at dawn.",
]
LONG_PROMPT = (
    "Here are some notes about the history of printing. "
    + " ".join(f"Note {i}: movable type spread through Europe in the fifteenth century." for i in range(60))
    + " Summarise the notes in one paragraph."
)


@dataclass(frozen=True)
class Api:
    name: str
    path: str

    def body(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        if self.name == "chat":
            return {"model": MODEL, "stream": True, "max_tokens": max_tokens, "messages": [_user(prompt)]}
        if self.name == "responses":
            return {"model": MODEL, "stream": True, "max_output_tokens": max_tokens, "store": False, "input": prompt}
        return {"model": MODEL, "stream": True, "max_tokens": max_tokens, "messages": [_user(prompt)]}

    def is_text(self, event: str | None, data: Any) -> bool:
        """Whether this event carries generated text (the first one is the time to first token)."""
        if self.name == "chat":
            return isinstance(data, dict) and any(c.get("delta", {}).get("content") for c in data.get("choices", ()))
        if self.name == "responses":
            return event == "response.output_text.delta"
        return event == "content_block_delta"

    def is_final(self, event: str | None, data: Any) -> bool:
        if self.name == "chat":
            return data == "[DONE]"
        if self.name == "responses":
            return event in ("response.completed", "response.incomplete")
        return event == "message_stop"

    def is_error(self, event: str | None, data: Any) -> bool:
        if event in ("error", "response.failed"):
            return True
        return isinstance(data, dict) and (data.get("type") == "error" or ("error" in data and self.name == "chat"))


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


ALL_APIS = (Api("chat", "/v1/chat/completions"), Api("responses", "/v1/responses"), Api("messages", "/v1/messages"))


@dataclass
class Tally:
    served: Counter[str] = field(default_factory=Counter)
    hung_up: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    ttft: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tokens_events: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _events(response: httpx.Response):
    """(event name, data) pairs of a server-sent event stream; data parsed as JSON where it is."""
    event: str | None = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ").strip()
        elif line.startswith("data: "):
            raw = line.removeprefix("data: ")
            try:
                data: Any = json.loads(raw)
            except ValueError:
                data = raw
            yield event, data
        elif not line:
            event = None


def one_request(client: httpx.Client, api: Api, rng: random.Random, hang_up_share: float, tally: Tally) -> None:
    prompt = LONG_PROMPT if rng.random() < 0.3 else rng.choice(SHORT_PROMPTS)
    max_tokens = rng.randint(16, 64)
    hang_up_after = rng.randint(1, 6) if rng.random() < hang_up_share else None
    started = time.perf_counter()
    first_text: float | None = None
    texts = 0
    try:
        with client.stream("POST", api.path, json=api.body(prompt, max_tokens)) as r:
            if r.status_code != 200:
                r.read()
                _error(tally, api, f"HTTP {r.status_code}: {r.text[:200]}")
                return
            for event, data in _events(r):
                if api.is_error(event, data):
                    _error(tally, api, f"error event: {str(data)[:200]}")
                    return
                if api.is_text(event, data):
                    texts += 1
                    if first_text is None:
                        first_text = time.perf_counter()
                    if hang_up_after is not None and texts >= hang_up_after:
                        with tally.lock:
                            tally.hung_up[api.name] += 1
                        return  # leaving the block closes the connection mid-stream
                if api.is_final(event, data):
                    with tally.lock:
                        tally.served[api.name] += 1
                        if first_text is not None:
                            tally.ttft[api.name].append(first_text - started)
                    return
            _error(tally, api, "the stream ended without its final event")
    except httpx.HTTPError as e:
        _error(tally, api, f"{type(e).__name__}: {e}")


def _error(tally: Tally, api: Api, what: str) -> None:
    with tally.lock:
        tally.errors.append(f"{api.name}: {what}")


def client_loop(base_url: str, apis: list[Api], seed: int, deadline: float, hang_up_share: float, tally: Tally) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(300, connect=10)) as client:
        while time.monotonic() < deadline:
            one_request(client, rng.choice(apis), rng, hang_up_share, tally)


def process_state(proc: psutil.Process) -> dict[str, float]:
    with proc.oneshot():
        return {
            "rss_mib": round(proc.memory_info().rss / 2**20, 1),
            "threads": proc.num_threads(),
            "fds": proc.num_fds(),
            "connections": len(proc.net_connections(kind="inet")),
        }


def wait_idle(base_url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{base_url}/health", timeout=10).json()
        if health.get("active") == 0 and health.get("queued") == 0:
            return health
        if time.monotonic() > deadline:
            return health
        time.sleep(0.25)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return round(xs[0], 3)
    return round(statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1], 3)


def start_server(args: argparse.Namespace, home: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "gemma_local", "serve", "--host", "127.0.0.1", "--port", "0",
        "--ctx", str(args.ctx), "--parallel", str(args.parallel), "--threads", str(args.threads),
    ]  # fmt: skip
    env = {**os.environ, "GEMMA_LOCAL_HOME": home, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Anthropic base_url: "):
            base_url = line.removeprefix("Anthropic base_url: ").strip()
            break
    else:
        raise RuntimeError(f"serve exited with {proc.wait()} before listening")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                return proc, base_url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        time.sleep(0.25)
    raise TimeoutError("the model did not load in 180 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent streaming clients (default 16)")
    parser.add_argument("--threads", type=int, default=THREADS, help="llama.cpp threads of the server")
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--parallel", type=int, default=4, help="slots")
    parser.add_argument("--hang-up-share", type=float, default=0.2, help="share of requests cut mid-stream")
    parser.add_argument("--max-rss-growth-mib", type=float, default=64.0, help="allowed RSS growth")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gemma-soak-") as home:
        proc, base_url = start_server(args, home)
        server = psutil.Process(proc.pid)
        try:
            paths = httpx.get(f"{base_url}/openapi.json", timeout=30).json()["paths"]
            apis = [api for api in ALL_APIS if api.path in paths]
            # Warm-up: every API once, so lazily created state (stores, caches) exists before "start".
            warm = Tally()
            with httpx.Client(base_url=base_url, timeout=300) as client:
                for api in apis:
                    one_request(client, api, random.Random(0), 0.0, warm)
            if warm.errors:
                raise RuntimeError(f"warm-up failed: {warm.errors}")
            wait_idle(base_url)
            start = process_state(server)

            tally = Tally()
            deadline = time.monotonic() + args.duration
            began = time.monotonic()
            threads = [
                threading.Thread(
                    target=client_loop,
                    args=(base_url, apis, args.seed * 1000 + i, deadline, args.hang_up_share, tally),
                    daemon=True,
                )
                for i in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.duration + 600)
            elapsed = time.monotonic() - began

            health = wait_idle(base_url)
            time.sleep(1.0)  # let closed connections' sockets and finished tasks go
            end = process_state(server)
            final = httpx.post(
                f"{base_url}/v1/chat/completions",
                json={"model": MODEL, "max_tokens": 1, "messages": [_user("Hi")]},
                timeout=120,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = None

    all_ttft = [x for xs in tally.ttft.values() for x in xs]
    checks = {
        "errors == 0": not tally.errors,
        f"rss growth <= {args.max_rss_growth_mib} MiB": end["rss_mib"] - start["rss_mib"] <= args.max_rss_growth_mib,
        "threads <= start + 4": end["threads"] <= start["threads"] + 4,
        "fds <= start + 8": end["fds"] <= start["fds"] + 8,
        "idle after (no slot or queue leak)": health.get("active") == 0 and health.get("queued") == 0,
        "serves after": final.status_code == 200,
        "SIGTERM exit 0": exit_code == 0,
    }
    result = {
        "machine": machine(),
        "command": " ".join(["bench/soak.py", *sys.argv[1:]]),
        "config": {**vars(args), "apis": [a.name for a in apis]},
        "elapsed_s": round(elapsed, 1),
        "served": dict(tally.served),
        "served_total": sum(tally.served.values()),
        "hung_up": dict(tally.hung_up),
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
        "ttft_s": {
            "all": {"p50": percentile(all_ttft, 50), "p99": percentile(all_ttft, 99), "n": len(all_ttft)},
            **{
                name: {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "n": len(xs)}
                for name, xs in sorted(tally.ttft.items())
            },
        },
        "server_start": start,
        "server_end": end,
        "server_health_end": health,
        "exit_code": exit_code,
        "checks": checks,
    }
    write_result("soak", result)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
