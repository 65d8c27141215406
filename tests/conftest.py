"""Shared fixtures: the real Gemma 3 270M model, loaded once per session; isolated user dirs.

Every test runs with GEMMA_LOCAL_HOME in a fresh temp dir, so nothing reads or writes the
user's real store. The embedded model file itself is assembled once into the (rebuildable)
cache dir and shared.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "gemma-home"
    home.mkdir()
    monkeypatch.setenv("GEMMA_LOCAL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("GEMMA_LOCAL_MODEL", "GEMMA_LOCAL_API_KEY", "HF_TOKEN", "LINKUP_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The embedded Gemma 3 270M GGUF (assembled once, then reused)."""
    from gemma_local.hub.embedded import embedded_model_path

    return embedded_model_path()


# One llama.cpp thread: on the 2-core CI machine the test client, the server's event loop and
# the scheduler need the other core, and llama.cpp's spinning threads slow to a crawl when
# they do not each get a core of their own.
TEST_THREADS = int(os.environ.get("GEMMA_LOCAL_TEST_THREADS", "1"))


@pytest.fixture(scope="session")
def tiny_mmproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Gemma 3 vision projector for the 270M model (see tests/tiny_mmproj.py)."""
    from tiny_mmproj import write_tiny_gemma3_mmproj

    return write_tiny_gemma3_mmproj(tmp_path_factory.mktemp("mmproj") / "tiny-gemma3-mmproj.gguf")


#: The session engine drafts with prompt lookup, so every API test also runs the speculative
#: path; tests/test_speculative.py compares its output with an engine that does not.
TEST_SPECULATION = {"mode": "ngram", "draft_max": 8}


@pytest.fixture(scope="session")
def engine(model_path: Path, tiny_mmproj: Path):
    """One real engine for the whole session: 4 slots of 2048 tokens, with the tiny vision
    projector loaded so every API's image path runs against the same shared server, and
    n-gram speculative decoding on."""
    from gemma_local.engine import ContextParams, Engine, SpeculationPolicy

    eng = Engine(
        model_path,
        ContextParams(n_ctx_per_seq=2048, n_seq=4, n_threads=TEST_THREADS),
        max_queue=8,
        model_id="gemma-3-270m-embedded",
        mmproj_path=tiny_mmproj,
        speculation=SpeculationPolicy(**TEST_SPECULATION),
    )
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def token_ids(engine) -> dict[str, int]:
    """Ids of the single tokens the API tests steer the base model with."""
    ids = {text: engine.model.tokenize(text, special=True) for text in ("Hello", "<eos>", "<end_of_turn>")}
    assert all(len(v) == 1 for v in ids.values())
    return {k: v[0] for k, v in ids.items()}


@pytest.fixture(scope="session")
def no_eos(token_ids) -> dict[str, int]:
    """logit_bias that keeps the model from ending early, so the output limit is always reached."""
    return {str(token_ids["<eos>"]): -100, str(token_ids["<end_of_turn>"]): -100}


@pytest.fixture(scope="session")
def force_hello(token_ids) -> dict[str, int]:
    """logit_bias under which every token is 'Hello': known output from a base model."""
    return {str(token_ids["Hello"]): 100}


# --- HTTP server fixtures (shared by the Chat Completions, Responses and Messages tests) ------


class LiveServer:
    """A real uvicorn server on 127.0.0.1 (a free port) running ``app`` on a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        # uvicorn skips signal handlers off the main thread; no access log (the app logs requests).
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def server_settings(**overrides):
    """ServerSettings with explicit values, so no GEMMA_LOCAL_* env var of the machine leaks in."""
    from gemma_local.settings import ServerSettings

    values = {"api_key": None, "cors_origins": [], "max_output_tokens": 8192, "max_body_bytes": 32 * 1024 * 1024}
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture(scope="session")
def live_server(engine, tmp_path_factory):
    """One real server (no API key) over the session's engine; stored responses in a temp dir."""
    from gemma_local.server import create_app

    responses_db = tmp_path_factory.mktemp("responses") / "responses.db"
    server = LiveServer(create_app(engine, server_settings(responses_db=responses_db)))
    yield server
    server.stop()


TEST_API_KEY = "test-secret-key"


@pytest.fixture(scope="session")
def auth_server(engine):
    """A second app on the same engine: API key required, 4 KiB body limit."""
    from gemma_local.server import create_app

    server = LiveServer(create_app(engine, server_settings(api_key=TEST_API_KEY, max_body_bytes=4096)))
    yield server
    server.stop()


@pytest.fixture
def openai_client(live_server):
    """The official OpenAI SDK against the live server, validating every response strictly."""
    import openai

    return openai.OpenAI(
        base_url=f"{live_server.base_url}/v1",
        api_key="unused",
        _strict_response_validation=True,
        max_retries=0,
        timeout=120,
    )


@pytest.fixture
def http(live_server):
    """A plain httpx client for the live server (raw status codes, headers and SSE bytes)."""
    import httpx

    with httpx.Client(base_url=live_server.base_url, timeout=120) as client:
        yield client


@pytest.fixture
def anthropic_client(live_server):
    """The official Anthropic SDK against the live server (no /v1 in its base URL), validating strictly."""
    import anthropic

    return anthropic.Anthropic(
        base_url=live_server.base_url,
        api_key="unused",
        _strict_response_validation=True,
        max_retries=0,
        timeout=120,
    )


def wait_engine_idle(engine, timeout: float = 30.0) -> None:
    """Wait until no generation runs beside the next one.

    "Same seed, same output" holds for a request running alone: one still running from an
    earlier test would share the batch, and batched matrix products round differently, which
    can flip a token sampled at temperature 1.
    """
    import time

    deadline = time.time() + timeout
    while engine.stats().active and time.time() < deadline:
        time.sleep(0.05)


class FailingEngine:
    """A scripted engine whose generations send one delta and then fail: the real one cannot be
    made to fail on demand, and every API must turn that into its own mid-stream error."""

    model_id = "gemma-3-270m-embedded"
    default_seed = None

    def __init__(self, info) -> None:
        self.info = info

    def submit(self, request):
        from gemma_local.engine import Finished, GenerationStream, TextDelta, Usage
        from gemma_local.errors import GenerationError

        stream = GenerationStream(request.request_id or "x", on_cancel=lambda: None, prompt_tokens=3)

        def produce() -> None:
            stream._push(TextDelta("partial"))
            time.sleep(0.05)
            error = GenerationError("Generation failed: no room left in the KV cache.")
            stream._push(Finished("error", Usage(prompt_tokens=3, completion_tokens=1), error=error))

        threading.Thread(target=produce, daemon=True).start()
        return stream

    def stats(self):
        from gemma_local.engine.scheduler import SchedulerStats

        return SchedulerStats(slots=1, active=0, queued=0, n_ctx_per_slot=512)

    def cancel_all(self) -> int:
        return 0

    def close(self) -> None:
        pass


def local_search_server(engine, tmp_path_factory: pytest.TempPathFactory, documents: dict[str, str]) -> LiveServer:
    """A live server whose search hook reads a local index of ``documents`` (file name → text);
    ``server.docs`` is their folder. Stop it when done."""
    from gemma_local.search import ProviderChain
    from gemma_local.search.providers.local_index import LocalIndex, LocalIndexProvider
    from gemma_local.server import create_app

    docs = tmp_path_factory.mktemp("docs")
    for name, text in documents.items():
        (docs / name).write_text(text)
    index = LocalIndex(tmp_path_factory.mktemp("index") / "search.db")
    index.add([docs])
    chain = ProviderChain([LocalIndexProvider(index)], timeout_s=10)
    server = LiveServer(create_app(engine, server_settings(), search_chain=chain))
    server.docs = docs
    return server


def pytest_collection_modifyitems(config, items) -> None:
    """The RPC tests run last: ggml cannot unregister an RPC worker's devices, and a worker they
    started is gone afterwards, so anything in this process that loads a model with llama.cpp's
    default devices (every registered one: the vision projector, the grammar probe's vocabulary)
    would reach for it and abort the process."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_rpc.py"))
