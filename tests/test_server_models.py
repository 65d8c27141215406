"""Serving every model in the store: load on demand, keep-alive, eviction, management, per model.

The suite's 270M is imported into a store twice, as ``alpha`` (512 tokens) and ``beta`` (a
different context, 1024 tokens), and each test runs a real server over that store with the
real loader (``serve`` without ``--model``), so every load here is a real llama.cpp load.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from click.testing import CliRunner
from conftest import TEST_THREADS, LiveServer, server_settings

HI = [{"role": "user", "content": "Say hi."}]
ALPHA_CTX, BETA_CTX = 512, 1024


@pytest.fixture(scope="module")
def store_home(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the 270M twice, as alpha and beta (registered in place, not copied)."""
    from gemma_local.hub.importer import import_model
    from gemma_local.hub.store import ModelStore

    home = tmp_path_factory.mktemp("multi-home")
    store = ModelStore(home)
    import_model(model_path, name="alpha", store=store)
    import_model(model_path, name="beta", store=store)
    return home


def _loader(max_memory_bytes: int | None = None, **ctx: int):
    from gemma_local.commands.serve_models import StoreLoader
    from gemma_local.settings import EngineSettings

    settings = EngineSettings(ctx=ALPHA_CTX, parallel=1, threads=TEST_THREADS, max_queue=8)
    return StoreLoader(settings, max_memory_bytes=max_memory_bytes, ctx_for={"beta": BETA_CTX, **ctx})


def _serve(store_home: Path, loader=None, **settings) -> LiveServer:
    from gemma_local.search import ProviderChain
    from gemma_local.server import create_app
    from gemma_local.serving import ModelCatalog
    from gemma_local.serving.catalog import parse_aliases

    server_config = server_settings(responses_db=store_home / f"responses-{time.monotonic_ns()}.db", **settings)
    catalog = ModelCatalog.from_store(parse_aliases(server_config.model_aliases), home=store_home)
    app = create_app(loader or _loader(), server_config, search_chain=ProviderChain([]), catalog=catalog)
    return LiveServer(app)


@pytest.fixture
def served(store_home: Path) -> Iterator[LiveServer]:
    server = _serve(store_home, model_aliases=["gpt-4o=beta"])
    yield server
    server.stop()


def _manager(server: LiveServer):
    return server.app.state.runtime.models


def _loaded(server: LiveServer) -> set[str]:
    return {m.entry.id for m in _manager(server).loaded}


def _openai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0, timeout=120
    )


def _chat(server: LiveServer, model: str, **extra) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 2, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# --- choosing a model --------------------------------------------------------------------------


def test_requests_alternate_between_models(served: LiveServer) -> None:
    """Three APIs alternate between two names of one file: each loads once, each keeps its context."""
    client = _openai(served)
    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert list(listed) == ["alpha", "beta", "gemma-3-270m-embedded"]
    assert not any(m["loaded"] for m in listed.values())
    assert listed["alpha"]["context_length"] == ALPHA_CTX and listed["beta"]["context_length"] == BETA_CTX
    assert "gpt-4o" in listed["beta"]["aliases"]

    messages = anthropic.Anthropic(base_url=served.base_url, api_key="x", _strict_response_validation=True)
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(model="alpha", messages=HI, max_tokens=2)
        assert r.headers["x-gemma-local-model"] == "alpha" and r.parse().model == "alpha"
        m = messages.messages.with_raw_response.create(model="beta", messages=HI, max_tokens=2)
        assert m.headers["x-gemma-local-model"] == "beta" and m.parse().model == "beta"
    assert _manager(served).loads == 2 and _loaded(served) == {"alpha", "beta"}

    listed = {m.id: m.model_extra for m in client.models.list().data}
    assert listed["alpha"]["loaded"] and listed["beta"]["loaded"] and not listed["gemma-3-270m-embedded"]["loaded"]
    assert listed["beta"]["context_length"] == BETA_CTX and listed["beta"]["status"]["slots"] == 1
    assert listed["alpha"]["status"]["memory_bytes"] > 0 and 0 < listed["alpha"]["status"]["expires_in_s"] <= 300

    # Each model checks prompts against its own context: 700 tokens fit beta, not alpha.
    long_prompt = [{"role": "user", "content": "word " * 700}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="alpha", messages=long_prompt, max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    assert client.chat.completions.create(model="beta", messages=long_prompt, max_tokens=1).usage.prompt_tokens > 700


def test_names_aliases_and_the_hosted_id(served: LiveServer) -> None:
    """Alias, file name and family id resolve; the hosted id falls back to the default, saying so."""
    r = _chat(served, "gpt-4o")  # --model-alias gpt-4o=beta
    assert r.status_code == 200 and r.headers["x-gemma-local-model"] == "beta"
    assert "x-gemma-local-substitution" not in r.headers
    r = _chat(served, "gemma-3-270m-Q4_K_M.gguf")  # a file name: the first model with that file
    assert r.headers["x-gemma-local-model"] == "alpha"
    r = _chat(served, "gemma-3-270m-it")  # the family: its best member
    assert r.headers["x-gemma-local-model"] == "alpha"

    r = _chat(served, "gemma-3-27b")  # no 27B pulled: the default model answers, and says so
    assert r.status_code == 200 and r.json()["model"] == "gemma-3-27b"
    assert r.headers["x-gemma-local-model"] == "alpha"
    assert r.headers["x-gemma-local-substitution"] == "gemma-3-27b is not available here; served by alpha"

    r = _chat(served, "gemma-3-12b")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "'alpha', 'beta'" in r.json()["error"]["message"]
    r = _chat(served, "beta", keep_alive="soon")
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    assert _loaded(served) == {"alpha", "beta"}  # the bad keep_alive was refused before anything else

    one = httpx.get(f"{served.base_url}/v1/models/gpt-4o", timeout=10).json()
    assert one["id"] == "gpt-4o" and one["loaded"] is True and "beta" in one["aliases"]


def test_previous_response_with_another_model(served: LiveServer) -> None:
    """A stored response keeps its model; continuing it with another model prefills the history again."""
    client = _openai(served)
    first = client.responses.create(model="alpha", input="My name is Ada.", max_output_tokens=3)
    second = client.responses.create(model="beta", input="What is my name?", previous_response_id=first.id,
                                      max_output_tokens=3)  # fmt: skip
    assert first.model == "alpha" and second.model == "beta"
    assert client.responses.retrieve(first.id).model == "alpha"
    # beta saw alpha's whole turn: more prompt than its own two-word question.
    assert second.usage.input_tokens > first.usage.input_tokens


def test_metrics_and_ps_per_model(served: LiveServer) -> None:
    from gemma_local.commands.ps import ps

    assert _chat(served, "alpha").status_code == 200
    assert _chat(served, "beta").status_code == 200
    text = httpx.get(f"{served.base_url}/metrics", timeout=10).text
    for model in ("alpha", "beta"):
        assert f'gemma_local_completion_tokens_total{{endpoint="/v1/chat/completions",model="{model}"}} 2.0' in text
        assert f'gemma_local_model_slots{{model="{model}"}} 1.0' in text
    assert "gemma_local_models_loaded 2.0" in text and "gemma_local_slots 2.0" in text

    result = CliRunner().invoke(ps, ["--url", served.base_url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["MODEL", "MEMORY", "CONTEXT", "SLOTS", "UNLOADS"]
    beta = next(line for line in lines if line.startswith("beta"))
    assert re.fullmatch(rf"beta +\d\.\d\d GiB +{BETA_CTX} +0/1 busy +in (4m\d\ds|5m00s)", beta), beta
    assert not any(line.startswith("gemma-3-270m-embedded") for line in lines)


# --- loading and unloading ---------------------------------------------------------------------


def test_concurrent_first_requests_load_once(served: LiveServer) -> None:
    statuses: list[int] = []

    def ask() -> None:
        statuses.append(_chat(served, "beta").status_code)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200, 200, 200]
    assert _manager(served).loads == 1


def test_a_request_during_a_load_gets_503_then_the_load_finishes(store_home: Path) -> None:
    """Waiting for a load is bounded: past --load-timeout, 503 with Retry-After; the load goes on."""
    server = _serve(store_home, load_timeout=0.01)
    try:
        r = _chat(server, "alpha")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "model_loading" and "still loading" in r.json()["error"]["message"]
        assert _wait_for(lambda: _loaded(server) == {"alpha"})
        assert _chat(server, "alpha").status_code == 200
        assert _manager(server).loads == 1
    finally:
        server.stop()


def test_idle_models_unload_after_their_keep_alive(served: LiveServer) -> None:
    assert _chat(served, "alpha", keep_alive=0).status_code == 200  # unloaded as soon as it is done
    assert _wait_for(lambda: "alpha" not in _loaded(served), 5)
    assert _chat(served, "beta", keep_alive="1s").status_code == 200
    assert "beta" in _loaded(served)
    assert _wait_for(lambda: "beta" not in _loaded(served), 10)
    assert _chat(served, "beta", keep_alive=-1).status_code == 200
    listed = httpx.get(f"{served.base_url}/v1/models/beta", timeout=10).json()
    assert listed["loaded"] and listed["status"]["expires_in_s"] is None  # -1: kept until unloaded


def test_eviction_under_a_memory_limit(store_home: Path) -> None:
    """With room for one model, loading another unloads the least recently used idle one."""
    from gemma_local.serving import ModelCatalog

    probe = _loader()
    catalog = ModelCatalog.from_store(home=store_home)
    alpha_bytes = probe.plan(catalog.get("alpha")).memory_bytes
    beta_bytes = probe.plan(catalog.get("beta")).memory_bytes
    server = _serve(store_home, _loader(max_memory_bytes=int(max(alpha_bytes, beta_bytes) * 1.5)))
    try:
        assert _chat(server, "alpha").status_code == 200
        assert _chat(server, "beta").status_code == 200
        assert _loaded(server) == {"beta"}  # alpha was evicted to make room
        assert _chat(server, "alpha").status_code == 200
        assert _loaded(server) == {"alpha"}
        # A model that cannot fit even alone: 400, naming what it needs and what there is.
        r = _chat(server, "gemma-3-270m-embedded")
        assert r.status_code == 200  # same size as alpha: fits once alpha goes
    finally:
        server.stop()
    server = _serve(store_home, _loader(max_memory_bytes=alpha_bytes // 2))
    try:
        r = _chat(server, "alpha")
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_too_large"
        message = r.json()["error"]["message"]
        assert "alpha needs about" in message and "this server may use" in message and "GiB free now" in message
        assert not _loaded(server)
    finally:
        server.stop()


def test_max_loaded(store_home: Path) -> None:
    server = _serve(store_home, max_loaded=1)
    try:
        assert _chat(server, "alpha").status_code == 200
        assert _chat(server, "beta").status_code == 200
        assert _loaded(server) == {"beta"}
    finally:
        server.stop()


def test_unload_while_another_model_streams(served: LiveServer, no_eos) -> None:
    """Unloading beta leaves alpha's stream running; unloading alpha mid-stream waits for it."""
    assert _chat(served, "beta").status_code == 200
    client = _openai(served)
    stream = client.chat.completions.create(
        model="alpha", messages=HI, max_tokens=24, stream=True, logit_bias=no_eos, temperature=0
    )
    chunks = iter(stream)
    next(chunks)
    r = httpx.post(f"{served.base_url}/v1/models/beta/unload", timeout=30)
    assert r.status_code == 200 and r.json() == {
        "id": "beta", "object": "model.unload", "loaded": False, "message": "beta is unloaded."
    }  # fmt: skip
    r = httpx.post(f"{served.base_url}/v1/models/alpha/unload", timeout=30)
    assert r.json()["loaded"] is True and "unloads when they end" in r.json()["message"]
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"  # the stream ran to its end
    assert _wait_for(lambda: not _loaded(served), 5)

    r = httpx.post(f"{served.base_url}/v1/models/beta/load", json={"keep_alive": "10m"}, timeout=120)
    assert r.status_code == 200 and r.json()["loaded"] is True and _loaded(served) == {"beta"}


def test_management_needs_the_admin_key(store_home: Path) -> None:
    server = _serve(store_home, api_key="user-key", admin_key="admin-key")
    try:
        user = {"authorization": "Bearer user-key"}
        admin = {"authorization": "Bearer admin-key"}
        assert httpx.get(f"{server.base_url}/v1/models", headers=user, timeout=10).status_code == 200
        r = httpx.post(f"{server.base_url}/v1/models/alpha/load", headers=user, timeout=60)
        assert r.status_code == 401
        r = httpx.post(f"{server.base_url}/v1/models/alpha/load", headers=admin, timeout=120)
        assert r.status_code == 200 and r.json()["loaded"] is True
        r = httpx.post(f"{server.base_url}/v1/models/alpha/unload", headers=user, timeout=60)
        assert r.status_code == 401
        r = httpx.post(f"{server.base_url}/v1/models/alpha/unload", headers=admin, timeout=60)
        assert r.status_code == 200 and r.json()["loaded"] is False
    finally:
        server.stop()


def test_a_one_model_server_keeps_its_model(http) -> None:
    """An app around one engine (as `serve --model X`): load is a no-op, unload is refused."""
    r = http.post("/v1/models/gemma-3-27b/load")
    assert r.status_code == 200 and r.json()["id"] == "gemma-3-270m-embedded" and r.json()["loaded"] is True
    r = http.post("/v1/models/gemma-3-270m-embedded/unload")
    assert r.status_code == 400 and "stays loaded" in r.json()["error"]["message"]
    assert http.get("/health").json()["loaded"] == ["gemma-3-270m-embedded"]


# --- small pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("30s", 30.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0), (0, 0.0), (12.5, 12.5)],
)
def test_keep_alive_durations(text, seconds) -> None:
    from gemma_local.serving import parse_keep_alive

    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["-1", -1, "-5m"])
def test_negative_keep_alive_is_forever(text) -> None:
    from gemma_local.serving import FOREVER, parse_keep_alive

    assert parse_keep_alive(text) == FOREVER


@pytest.mark.parametrize("text", ["soon", "5 minutes", "m5", "", True, "nan"])
def test_bad_keep_alive_is_a_clear_error(text) -> None:
    from gemma_local.errors import InvalidRequestError
    from gemma_local.serving import parse_keep_alive

    with pytest.raises(InvalidRequestError) as e:
        parse_keep_alive(text)
    assert e.value.param == "keep_alive"


def test_serve_refuses_bad_serving_options() -> None:
    from gemma_local.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--mmproj", "p.gguf"])
    assert result.exit_code == 1 and "--mmproj needs --model" in result.output
    result = runner.invoke(main, ["serve", "--keep-alive", "forever", "--port", "0"])
    assert result.exit_code == 1 and "Invalid keep_alive 'forever'" in result.output
    result = runner.invoke(main, ["serve", "--model-alias", "gpt-4o", "--port", "0"])
    assert result.exit_code == 1 and "write NAME=MODEL" in result.output


def test_a_memory_cap_plans_within_it(store_home: Path) -> None:
    """--max-memory-gib is planned for: with no --ctx, a model gets the plan that fits the cap (the
    planner quantizes the KV cache before it gives up context or slots)."""
    from gemma_local.commands.serve_models import StoreLoader
    from gemma_local.memory import GIB
    from gemma_local.serving import ModelCatalog
    from gemma_local.settings import EngineSettings

    alpha = ModelCatalog.from_store(home=store_home).get("alpha")
    # Checkpoints fixed: left to the planner, spare memory buys more of them, and a cap then takes those first.
    settings = EngineSettings(checkpoints=8)
    roomy = StoreLoader(settings, max_memory_bytes=64 * GIB).plan(alpha)
    cap = int(roomy.memory_bytes * 0.7)
    tight = StoreLoader(settings, max_memory_bytes=cap)
    plan = tight.plan(alpha)
    assert tight.budget_bytes <= cap and plan.memory_bytes <= tight.budget_bytes
    assert plan.memory_bytes < roomy.memory_bytes
    assert (plan.ctx, plan.parallel) != (roomy.ctx, roomy.parallel) or "q8_0" in plan.detail
