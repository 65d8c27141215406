"""/health, /metrics, /v1/models, the OpenAPI document, the request log and `gemma-local serve`."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import subprocess
import sys
import threading
import time

import anyio.to_thread
import httpx
import openai
import pytest
from conftest import LiveServer, server_settings

from gemma_local.errors import ModelLoadError

MODEL = "gemma-3-27b"
HI = [{"role": "user", "content": "Write a short poem about the sea."}]


class _Borrowed:
    """The session engine, lent to an app that thinks it owns it (its close() must not free it)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.closed = False

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def close(self) -> None:
        self.closed = True


def test_health_is_503_while_loading_then_200(engine) -> None:
    from gemma_local.server import create_app

    release = threading.Event()
    borrowed = _Borrowed(engine)

    def factory():
        release.wait(30)
        return borrowed

    server = LiveServer(create_app(factory, server_settings()))
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            loading = client.get("/health")
            assert loading.status_code == 503
            assert loading.json()["status"] == "loading"
            r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 1})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "model_loading"
            assert r.headers["retry-after"] == "5"
            release.set()
            deadline = time.monotonic() + 30
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            ready = client.get("/health").json()
            assert ready["status"] == "ok" and ready["model"] == "gemma-3-270m-embedded"
            r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 1})
            assert r.status_code == 200
    finally:
        release.set()
        server.stop()
    assert borrowed.closed  # an engine the app loaded is closed with it


def test_closing_the_engine_at_shutdown_leaves_the_event_loop_free(engine) -> None:
    """Engine.close waits for the scheduler's current micro-batch (seconds for a big model on a
    CPU): the lifespan runs it in a worker thread, so the loop goes on serving meanwhile."""
    from gemma_local.server import create_app

    ticks = 0
    ticks_while_closing: list[int] = []

    class SlowToClose(_Borrowed):
        def close(self) -> None:
            before = ticks
            time.sleep(0.5)
            ticks_while_closing.append(ticks - before)
            super().close()

    borrowed = SlowToClose(engine)
    app = create_app(lambda: borrowed, server_settings())

    async def main() -> None:
        nonlocal ticks

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        async with app.router.lifespan_context(app):
            while app.state.runtime.status != "ready":
                await asyncio.sleep(0.01)
            ticker = asyncio.create_task(tick())
        ticker.cancel()

    asyncio.run(main())
    assert borrowed.closed
    assert ticks_while_closing[0] >= 10  # ~50 ticks of 10 ms in the 0.5 s close; none if it blocked


def test_dependencies_do_not_wait_for_the_thread_pool(engine) -> None:
    """A sync FastAPI dependency runs in the worker-thread pool, queued behind the pipeline's
    submit and tokenize work there; the API's dependencies are async, so a request gets through
    while every worker is busy."""
    from gemma_local.server import create_app
    from gemma_local.server.auth import require_api_key
    from gemma_local.server.openai_responses import get_response_store
    from gemma_local.server.runtime import get_models

    for dependency in (require_api_key, get_models, get_response_store):
        assert inspect.iscoroutinefunction(dependency), dependency.__name__
    app = create_app(engine, server_settings())

    async def main() -> int:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # this loop's pool: one worker
        release = threading.Event()
        busy = asyncio.ensure_future(anyio.to_thread.run_sync(release.wait))
        await asyncio.sleep(0.05)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                r = await asyncio.wait_for(client.get("/v1/models"), 10)
        finally:
            release.set()
            await busy
        return r.status_code

    assert asyncio.run(main()) == 200


def test_load_failure_reported(engine) -> None:
    from gemma_local.server import create_app

    failures: list[BaseException] = []

    def factory():
        raise ModelLoadError("llama.cpp could not load broken.gguf.", path="broken.gguf")

    server = LiveServer(create_app(factory, server_settings(), on_load_failure=failures.append))
    try:
        deadline = time.monotonic() + 10
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        health = httpx.get(f"{server.base_url}/health", timeout=10)
        r = httpx.get(f"{server.base_url}/v1/models", timeout=10)
    finally:
        server.stop()
    assert health.status_code == 503
    assert health.json() == {"status": "failed", "error": "llama.cpp could not load broken.gguf."}
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "model_load_failed"
    assert "broken.gguf" in r.json()["error"]["message"]


def test_health_ready(http) -> None:
    r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["slots"] == 4


def test_models_list_and_retrieve(openai_client) -> None:
    listed = openai_client.models.list().data
    assert [m.id for m in listed] == ["gemma-3-270m-embedded"]  # one object per model
    extra = listed[0].model_extra or {}
    assert "gemma-3-27b" in extra["aliases"] and "gemma-3-270m" in extra["aliases"]
    assert not any(i in extra["aliases"] for i in ("gemma-3-4b", "gemma-3-12b", "gemma-3-1b"))
    assert extra["loaded"] is True and extra["context_length"] == 2048
    assert extra["status"]["pinned"] is True and extra["status"]["slots"] == 4
    model = openai_client.models.retrieve("gemma-3-27b")
    assert model.id == "gemma-3-27b" and model.object == "model" and model.owned_by == "gemma-local"
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.models.retrieve("gemma-3-12b")
    assert e.value.code == "model_not_found"


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} not in /metrics"
    return float(match.group(match.lastindex))


def test_metrics(http, openai_client) -> None:
    before = http.get("/metrics").text
    r = openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    after_response = http.get("/metrics")
    assert after_response.status_code == 200
    assert after_response.headers["content-type"].startswith("text/plain")
    after = after_response.text
    chat = 'endpoint="/v1/chat/completions",model="gemma-3-270m-embedded"'
    ok = 'endpoint="/v1/chat/completions",status="200"'
    requests_before = _metric(before, "gemma_local_requests_total", ok) if ok in before else 0.0
    assert _metric(after, "gemma_local_requests_total", ok) == requests_before + 1
    tokens_delta = _metric(after, "gemma_local_completion_tokens_total", chat) - (
        _metric(before, "gemma_local_completion_tokens_total", chat) if "completion_tokens_total{" in before else 0.0
    )
    assert tokens_delta == r.usage.completion_tokens
    assert _metric(after, "gemma_local_prompt_tokens_total", chat) >= r.usage.prompt_tokens
    assert _metric(after, "gemma_local_queue_depth") == 0
    assert _metric(after, "gemma_local_slots") == 4
    assert _metric(after, "gemma_local_time_to_first_token_seconds_count", chat) >= 1
    assert "gemma_local_generation_tokens_per_second_bucket" in after


def test_request_log_line(openai_client, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="gemma_local.server"):
        r = openai_client.chat.completions.with_raw_response.create(model=MODEL, messages=HI, max_tokens=2)
        completion = r.parse()
        deadline = time.monotonic() + 5
        while completion.id not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert r.headers["x-request-id"] == completion.id
    line = next(rec.getMessage() for rec in caplog.records if completion.id in rec.getMessage())
    u = completion.usage
    assert f"POST /v1/chat/completions status=200 in={u.prompt_tokens} out={u.completion_tokens}" in line
    assert f"cached={u.prompt_tokens_details.cached_tokens}" in line
    # The hosted id, answered by the one model here: the substitution is stated.
    substituted = r" model=gemma-3-27b->gemma-3-270m-embedded \(substituted\)"
    assert re.search(r"ttft=\d+\.\d+s tok/s=(\d+\.\d|-) finish=\w+ time=\d+\.\d+s" + substituted + "$", line)
    assert r.headers["x-gemma-local-model"] == "gemma-3-270m-embedded"
    assert "served by gemma-3-270m-embedded" in r.headers["x-gemma-local-substitution"]


def test_openapi_document_describes_request(http) -> None:
    doc = http.get("/openapi.json").json()
    op = doc["paths"]["/v1/chat/completions"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    props = doc["components"]["schemas"][ref]["properties"]
    assert {"model", "messages", "temperature", "stop", "n", "web_search_linkup", "disable_formatting"} <= set(props)
    assert "/v1/models" in doc["paths"] and "/health" in doc["paths"]
    assert http.get("/docs").status_code == 200


def test_cors_off_by_default_and_on_when_configured(engine, http) -> None:
    from gemma_local.server import create_app

    preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in http.options("/v1/chat/completions", headers=preflight).headers
    server = LiveServer(create_app(engine, server_settings(cors_origins=["http://app.example"])))
    try:
        r = httpx.options(f"{server.base_url}/v1/chat/completions", headers=preflight, timeout=10)
    finally:
        server.stop()
    assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_max_output_tokens_caps_requests(engine) -> None:
    from gemma_local.server import create_app

    no_eos = {str(engine.model.tokenize(t, special=True)[0]): -100 for t in ("<eos>", "<end_of_turn>")}
    server = LiveServer(create_app(engine, server_settings(max_output_tokens=3)))
    try:
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
        )
        r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=50, logit_bias=no_eos)
    finally:
        server.stop()
    assert r.usage.completion_tokens == 3
    assert r.choices[0].finish_reason == "length"


# --- the serve command ---------------------------------------------------------------------------


def test_serve_helpers() -> None:
    from gemma_local.commands.serve import base_urls, is_loopback

    assert base_urls("127.0.0.1", 8080) == ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080")
    assert base_urls("0.0.0.0", 9000) == ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000")
    assert base_urls("::1", 1) == ("http://[::1]:1/v1", "http://[::1]:1")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_serve_command_end_to_end(isolated_home) -> None:
    """`gemma-local serve` prints the base URLs, warns on a public bind without a key, and serves."""
    env = {**os.environ, "GEMMA_LOCAL_HOME": str(isolated_home)}
    cmd = [sys.executable, "-m", "gemma_local", "serve", "--host", "0.0.0.0", "--port", "0",
           "--ctx", "512", "--parallel", "1", "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        openai_line = proc.stdout.readline().strip()
        anthropic_line = proc.stdout.readline().strip()
        match = re.fullmatch(r"OpenAI base_url: (http://127\.0\.0\.1:(\d+)/v1)", openai_line)
        assert match, openai_line
        assert anthropic_line == f"Anthropic base_url: http://127.0.0.1:{match.group(2)}"
        deadline = time.monotonic() + 60
        while True:
            health = httpx.get(f"http://127.0.0.1:{match.group(2)}/health", timeout=10)
            if health.status_code == 200 or time.monotonic() > deadline:
                break
            assert health.status_code == 503
            time.sleep(0.1)
        assert health.json()["model"] == "gemma-3-270m-embedded"
        client = openai.OpenAI(base_url=match.group(1), api_key="x", _strict_response_validation=True, max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=1).usage.completion_tokens == 1
        models = httpx.get(f"http://127.0.0.1:{match.group(2)}/v1/models", timeout=10).text
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
    assert "WARNING" in stderr and "NO API key" in stderr
    # The embedded model is named pre-trained once, on stderr, and never in what clients read.
    notes = [line for line in stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and notes[0].startswith("note: gemma-3-270m-embedded is Gemma 3 270M pre-trained")
    assert "note:" not in stdout + openai_line + anthropic_line + models
    assert "POST /v1/chat/completions status=200" in stderr
