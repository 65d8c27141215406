"""Time to first token for a cold model (load + first token) vs the same model warm.

A real server (``serve`` without ``--model``: the store served on demand) over a temporary
store holding the bench model; each round unloads it through ``POST /v1/models/{id}/unload``,
then sends a streamed request (cold: the server loads the model first) and another (warm), and
times the first content chunk at the client. Each request's prompt starts differently, so the
warm one gets no help from the prefix cache.

    .venv/bin/python bench/cold_model.py [--rounds 5] [--ctx 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import THREADS, machine, median, model_path, write_result

NAME = "bench-model"


def ttft(base_url: str, round_no: int, kind: str) -> tuple[float, int]:
    """Seconds from sending the request to its first content chunk, and its prompt tokens."""
    body = {
        "model": NAME,
        "messages": [{"role": "user", "content": f"({kind} {round_no}) Write a short poem about the sea."}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    prompt_tokens = 0
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    assert first is not None
    return first, prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=2048)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    os.environ["GEMMA_LOCAL_HOME"] = str(home)

    import uvicorn

    from gemma_local.commands.serve_models import StoreLoader
    from gemma_local.hub.importer import import_model
    from gemma_local.search import ProviderChain
    from gemma_local.server import create_app
    from gemma_local.settings import EngineSettings, ServerSettings

    import_model(model_path(), name=NAME)
    loader = StoreLoader(EngineSettings(ctx=args.ctx, parallel=1, threads=THREADS))
    settings = ServerSettings(api_key=None, responses_db=home / "responses.db")
    app = create_app(loader, settings, search_chain=ProviderChain([]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    cold, warm, prompt_tokens = [], [], 0
    try:
        for i in range(args.rounds):
            httpx.post(f"{base_url}/v1/models/{NAME}/unload", timeout=60).raise_for_status()
            seconds, prompt_tokens = ttft(base_url, i, "cold")
            cold.append(seconds)
            warm.append(ttft(base_url, i, "warm")[0])
    finally:
        server.should_exit = True
        thread.join(60)
    result = {
        "bench": "cold_model",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "ctx": args.ctx,
        "rounds": args.rounds,
        "prompt_tokens": prompt_tokens,
        "cold_ttft_s": round(median(cold), 3),
        "warm_ttft_s": round(median(warm), 3),
        "cold_over_warm": round(median(cold) / median(warm), 1),
        "load_cost_s": round(median(cold) - median(warm), 3),
        "cold_all": [round(x, 3) for x in cold],
        "warm_all": [round(x, 3) for x in warm],
    }
    write_result("cold_model", result)


if __name__ == "__main__":
    main()
