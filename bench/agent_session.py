"""An 8-turn coding-agent session against `gemma-local serve`: prompt reuse and TTFT per turn.

Replays request skeletons shaped like Claude Code's (Anthropic Messages) and Codex CLI's
(Responses) requests: the same fields, roles, block layout, tool count and sizes, filled with
text written here (never the clients' own prompts). Each turn re-sends the whole conversation
the way the clients do: the answer it got back (text or a tool call) and then a tool result or
a new user message. Turns alternate: even turns end in a tool call (forced with ``--force-tool``,
as the client tests do), odd turns answer freely.

For every turn it prints the prompt tokens, the cached tokens and the time to first token
(from the server's request log), then the TTFT of a *cold* run of the same request on a second
server whose one slot was just taken by another prompt. Target: every turn after the first
reuses >= 95% of the previous turn's prompt, with TTFT <= 10% of cold.

    .venv/bin/python bench/agent_session.py [--turns 8] [--scale 0.25] [--clients claude,codex]

``--scale`` shrinks the skeletons (1.0 is full size: ~12K prompt tokens for Claude Code's first
turn, ~8K for Codex's); a cold 12K-token prefill on a 2-core CPU takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from common import write_result

MODEL = "gemma-3-27b"
TOOL = "read_file"
LOG = re.compile(r"POST (\S+) status=(\d+) in=(\d+) out=\d+ cached=(\d+) ttft=(\S+)")
_PROSE = (
    "the agent reads files in the workspace before it edits them and keeps each change small "
    "tests run after every edit a failing test is read carefully and the smallest fix is made "
    "commands that change the system are explained first output is summarised not pasted whole "
    "paths are relative to the project root and secrets are never printed or stored in notes"
)
WORDS = _PROSE.split()


def filler(chars: int, seed: int) -> str:
    """Deterministic prose of about ``chars`` characters (our own words)."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
        out.append(sentence)
        size += len(sentence) + 1
    return " ".join(out)


def _schema(*names: str) -> dict:
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": list(names[:1])}


def _tool_names(n: int) -> list[str]:
    return [TOOL, *(f"tool_{i}" for i in range(1, n))]


# --- Claude Code's shape: Anthropic Messages ---------------------------------------------------


def claude_first(scale: float) -> dict:
    tools = [
        {"name": name, "description": filler(int(2500 * scale), i), "input_schema": _schema("path", "detail")}
        for i, name in enumerate(_tool_names(12))
    ]
    tools.append({"name": "deferred_placeholder", "description": "Loaded later.", "input_schema": _schema(),
                  "defer_loading": True})  # fmt: skip
    cache = {"type": "ephemeral"}
    return {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": json.dumps({"session": "bench"})},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=0.0.0.b3c; cc_entrypoint=bench;"},
            {"type": "text", "text": "You are a coding agent working in a terminal.", "cache_control": cache},
            {"type": "text", "text": filler(int(7000 * scale), 100), "cache_control": cache},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": filler(400, 101)},
                    {"type": "text", "text": "Read the project notes."},
                ],
            },
            {
                "role": "system",
                "content": [{"type": "text", "text": filler(int(9000 * scale), 102), "cache_control": cache}],
            },
        ],
        "tools": tools,
    }


def claude_next(body: dict, answer: dict, turn: int) -> dict:
    """The next request: the answer's content blocks, then a tool result or a new question."""
    content = [b for b in answer["content"] if b["type"] in ("text", "tool_use")] or [{"type": "text", "text": "."}]
    messages = [*body["messages"], {"role": "assistant", "content": content}]
    calls = [b for b in content if b["type"] == "tool_use"]
    if calls:
        results = [{"type": "tool_result", "tool_use_id": c["id"], "content": filler(600, turn)} for c in calls]
        messages.append({"role": "user", "content": results})
    else:
        messages.append(
            {"role": "user", "content": [{"type": "text", "text": f"Now step {turn}: {filler(160, turn)}"}]}
        )
    return {**body, "messages": messages}


def claude_stream(client: httpx.Client, body: dict) -> dict:
    """The streamed message, reassembled (text and tool_use blocks)."""
    blocks: dict[int, dict] = {}
    with client.stream("POST", "/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "content_block_start":
                blocks[event["index"]] = {**event["content_block"], "_json": ""}
            elif event["type"] == "content_block_delta":
                delta, block = event["delta"], blocks[event["index"]]
                if delta["type"] == "text_delta":
                    block["text"] = block.get("text", "") + delta["text"]
                elif delta["type"] == "input_json_delta":
                    block["_json"] += delta["partial_json"]
    content = []
    for _, block in sorted(blocks.items()):
        raw = block.pop("_json")
        if block["type"] == "tool_use" and raw:
            block["input"] = json.loads(raw)
        content.append(block)
    return {"content": content}


# --- Codex's shape: Responses ------------------------------------------------------------------


def codex_first(scale: float) -> dict:
    tools = [
        {"type": "function", "name": name, "description": filler(int(900 * scale), 200 + i), "strict": False,
         "parameters": {**_schema("path"), "additionalProperties": False}}
        for i, name in enumerate(_tool_names(7))
    ]  # fmt: skip

    def message(role: str, *texts: str, n: int) -> dict:
        return {"type": "message", "id": f"msg_{n}", "role": role,
                "content": [{"type": "input_text", "text": t} for t in texts]}  # fmt: skip

    return {
        "model": MODEL,
        "stream": True,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "bench-session",
        "client_metadata": {"session": "bench"},
        "input": [
            message("developer", filler(int(17000 * scale), 300), n=1),
            message("developer", filler(int(1500 * scale), 301), filler(int(800 * scale), 302), n=2),
            message("user", "<environment>cwd: /project, shell: bash</environment>", n=3),
            message("user", "Read the project notes.", n=4),
        ],
        "tools": tools,
    }


def codex_next(body: dict, output: list[dict], turn: int) -> dict:
    # A call cut at the output cap is not sent back (Codex ends such a turn); a new question follows.
    items = [i for i in output if i["type"] in ("message", "function_call") and i.get("status") != "incomplete"]
    tail: list[dict] = []
    for item in items:
        if item["type"] == "function_call":
            tail.append({"type": "function_call_output", "call_id": item["call_id"], "output": filler(600, turn)})
    if not tail:
        tail.append({"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": f"Now step {turn}: {filler(160, turn)}"}]})  # fmt: skip
    echoed = [{k: v for k, v in i.items() if k not in ("status",)} for i in items]
    return {**body, "input": [*body["input"], *echoed, *tail]}


def codex_stream(client: httpx.Client, body: dict) -> list[dict]:
    with client.stream("POST", "/v1/responses", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.read().decode()[:2000]}")
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["type"] in ("response.completed", "response.incomplete"):
                    return event["response"]["output"]
    raise RuntimeError("the stream ended without a response")


# --- servers -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(home: Path, name: str, *flags: str) -> Iterator[tuple[httpx.Client, Path]]:
    port, log = _free_port(), home / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMMA_LOCAL_")} | {"GEMMA_LOCAL_HOME": str(home)}
    cmd = [sys.executable, "-m", "gemma_local", "serve", "--port", str(port), *flags]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sink, env=env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
    try:
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.5)
        yield client, log
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)


def logged(log: Path, count: int) -> tuple[int, int, float]:
    """(prompt tokens, cached tokens, TTFT s) of the ``count``-th model request the server logged
    (the line is written just after the stream ends: wait for it)."""
    deadline = time.monotonic() + 30
    while True:
        lines = [m for m in LOG.finditer(log.read_text()) if m[1] != "/v1/chat/completions"]
        if len(lines) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    m = lines[count - 1]
    return int(m[3]), int(m[4]), float(m[5].rstrip("s"))


def run_client(client_name: str, warm: httpx.Client, warm_log: Path, cold: httpx.Client, cold_log: Path,
               turns: int, scale: float) -> list[dict]:  # fmt: skip
    first, nxt, stream = {
        "claude": (claude_first, claude_next, claude_stream),
        "codex": (codex_first, codex_next, lambda c, b: {"output": codex_stream(c, b)}),
    }[client_name]
    body, rows, previous = first(scale), [], None
    for turn in range(1, turns + 1):
        answer = stream(warm, body)
        prompt, cached, ttft = logged(warm_log, turn)
        # Cold: another prompt takes the cold server's one slot first, so nothing is reused.
        other = [{"role": "user", "content": f"{client_name} {turn}"}]
        cold.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 1, "messages": other})
        stream(cold, body)
        cold_prompt, cold_cached, cold_ttft = logged(cold_log, turn)
        row = {
            "client": client_name, "turn": turn, "prompt_tokens": prompt, "cached_tokens": cached,
            "reuse_of_previous": round(min(cached, previous) / previous, 4) if previous else None, "ttft_s": ttft,
            "cold_ttft_s": cold_ttft, "cold_cached_tokens": cold_cached,
            "ttft_vs_cold": round(ttft / cold_ttft, 4) if cold_ttft else None,
        }  # fmt: skip
        assert cold_prompt == prompt, (cold_prompt, prompt)
        rows.append(row)
        print(json.dumps(row), flush=True)
        previous = prompt
        body = nxt(body, answer if client_name == "claude" else answer["output"], turn + 1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--scale", type=float, default=0.25, help="skeleton size (1.0: the clients' sizes)")
    parser.add_argument("--clients", default="claude,codex")
    parser.add_argument("--max-output-tokens", default="48")
    parser.add_argument("--ctx", default="32768")
    args = parser.parse_args()
    flags = ("--ctx", args.ctx, "--parallel", "1", "--max-output-tokens", args.max_output_tokens)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for name in args.clients.split(","):
            # Fresh servers per client, so one client's cache never helps the other; the cold one
            # must not load what the warm one saved on disk (in the home they share).
            cold_flags = (*flags, "--force-tool", TOOL, "--no-prefix-disk")
            with serve(home, f"{name}-warm", *flags, "--force-tool", TOOL) as (warm, warm_log), \
                 serve(home, f"{name}-cold", *cold_flags) as (cold, cold_log):  # fmt: skip
                rows += run_client(name, warm, warm_log, cold, cold_log, args.turns, args.scale)
    later = [r for r in rows if r["turn"] > 1]
    summary = {
        "min_reuse_of_previous": min((r["reuse_of_previous"] for r in later), default=None),
        "max_ttft_vs_cold": max((r["ttft_vs_cold"] for r in later), default=None),
        "load_average": os.getloadavg(),
    }
    write_result("agent_session", {"args": vars(args), "turns": rows, "summary": summary})


if __name__ == "__main__":
    main()
