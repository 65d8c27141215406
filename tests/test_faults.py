"""Faults: disconnects, signals, an engine that raises, memory that runs out, a full queue.

- A client that disconnects mid-stream frees its slot within one decode step.
- SIGTERM and SIGINT stop a real ``python -m gemma_local serve``: it stops accepting, lets
  streams in flight finish within the grace period, ends the rest with a clean error event,
  and exits 0.
- A request that makes the engine raise fails alone; the others finish.
- Running out of memory at load gives a message that names a smaller context or quantization.
- A full queue answers 429 with ``Retry-After`` in every API's envelope.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from conftest import LiveServer, server_settings

from gemma_local.engine import Finished, TextDelta

MODEL = "gemma-3-27b"
HI = [{"role": "user", "content": "Write a long story about the sea."}]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> float:
    """Seconds until ``predicate()`` holds; fails the test after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_idle(engine, timeout: float = 30.0) -> float:
    return wait_until(lambda: engine.stats().active == 0 and engine.stats().queued == 0, timeout, "an idle engine")


# --- an engine that records what happens to each stream --------------------------------------


@dataclass
class StreamLog:
    """What happened to one generation stream, with the number of decode calls at each point."""

    deltas: int = 0
    cancelled_at_decode: int | None = None
    finished: Finished | None = None
    finished_at_decode: int | None = None


@dataclass
class DecodeCounter:
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class RecordingEngine:
    """The session engine, recording each stream's deltas, its cancel and its end."""

    def __init__(self, engine, decodes: DecodeCounter) -> None:
        self._engine = engine
        self._decodes = decodes
        self.logs: list[StreamLog] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def submit(self, request):
        stream = self._engine.submit(request)
        log = StreamLog()
        push, cancel = stream._push, stream.cancel

        def recording_push(event) -> None:
            if isinstance(event, TextDelta):
                log.deltas += 1
            elif isinstance(event, Finished):
                log.finished, log.finished_at_decode = event, self._decodes.calls
            push(event)

        def recording_cancel() -> None:
            if log.cancelled_at_decode is None and log.finished is None:
                log.cancelled_at_decode = self._decodes.calls
            cancel()

        # The scheduler and the server call these through the instance, so the wrappers see every call.
        stream._push, stream.cancel = recording_push, recording_cancel
        self.logs.append(log)
        return stream


@pytest.fixture
def decode_counter(monkeypatch) -> DecodeCounter:
    """Counts llama_decode calls (one per scheduler step) while the test runs."""
    import llama_cpp

    counter = DecodeCounter()
    real = llama_cpp.llama_decode

    def counting(ctx, batch):
        with counter.lock:
            counter.calls += 1
        return real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", counting)
    return counter


@contextmanager
def served(engine_like, **settings: Any) -> Iterator[LiveServer]:
    from gemma_local.server import create_app

    server = LiveServer(create_app(engine_like, server_settings(**settings)))
    try:
        yield server
    finally:
        server.stop()


# --- disconnects -------------------------------------------------------------------------------


def test_disconnect_mid_stream_frees_the_slot_within_one_decode_step(engine, decode_counter, no_eos) -> None:
    recording = RecordingEngine(engine, decode_counter)
    body = {"model": MODEL, "messages": HI, "max_tokens": 2000, "stream": True, "logit_bias": no_eos}
    with served(recording) as server, httpx.Client(base_url=server.base_url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i >= 8:
                    break
            assert engine.stats().active == 1
        closed_at = time.monotonic()
        # Leaving the block closed the connection.
        log = recording.logs[0]
        wait_until(lambda: log.finished is not None, 30, "the stream to end")
        freed_after = time.monotonic() - closed_at
        wait_idle(engine)
    assert log.finished is not None and log.finished.finish_reason == "cancelled"
    assert log.cancelled_at_decode is not None
    # A step already decoding when the cancel landed may complete; no further step starts for it.
    assert log.finished_at_decode is not None
    assert log.finished_at_decode - log.cancelled_at_decode <= 1, (log.cancelled_at_decode, log.finished_at_decode)
    assert log.finished.usage.completion_tokens < 2000
    # Noticing the disconnect is the server's job: generous for a loaded CI machine, far below 2000 tokens.
    assert freed_after < 10, freed_after


# --- a request that makes the engine raise fails alone ----------------------------------------

#: Requests with this seed get a sampler that raises on its first token (a stand-in for any bug
#: or llama.cpp failure that hits one request).
POISON_SEED = 66_666


@pytest.fixture
def poisoned_sampler(monkeypatch) -> None:
    from gemma_local.engine import engine as engine_module
    from gemma_local.engine.sampling import SamplerChain

    class FaultySampler(SamplerChain):
        def __init__(self, params, **kwargs: Any) -> None:
            super().__init__(params, **kwargs)
            self._poisoned = params.seed == POISON_SEED

        def sample(self, ctx, batch_index: int) -> int:
            if self._poisoned:
                raise RuntimeError("injected sampler fault")
            return super().sample(ctx, batch_index)

    monkeypatch.setattr(engine_module, "SamplerChain", FaultySampler)


def _sse_events(response: httpx.Response) -> Iterator[dict[str, Any] | str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


def test_engine_fault_fails_only_its_own_request(live_server, engine, poisoned_sampler, no_eos) -> None:
    healthy = {"model": MODEL, "messages": HI, "max_tokens": 24, "stream": True, "logit_bias": no_eos, "seed": 1}
    poisoned = {"model": MODEL, "messages": HI, "max_tokens": 24, "logit_bias": no_eos, "seed": POISON_SEED}
    events: list[dict[str, Any] | str] = []
    with (
        httpx.Client(base_url=live_server.base_url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json=healthy) as r,
    ):
        assert r.status_code == 200
        stream = _sse_events(r)
        events.append(next(stream))  # the role chunk: the healthy request is generating
        events.append(next(stream))
        # The poisoned request joins the same batch and fails on its first token...
        failed = client.post("/v1/chat/completions", json=poisoned)
        events.extend(stream)
    assert failed.status_code == 500, failed.text
    error = failed.json()["error"]
    assert error["type"] == "server_error"
    assert "injected sampler fault" in error["message"]
    # ...while the healthy one runs to its end untouched.
    assert events[-1] == "[DONE]"
    finishes = [e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")]
    assert finishes[-1] == "length"
    assert not any(isinstance(e, dict) and "error" in e for e in events)
    wait_idle(engine)
    ok = httpx.post(
        f"{live_server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "max_tokens": 1},
        timeout=60,
    )
    assert ok.status_code == 200


# --- a real `gemma-local serve` process ---------------------------------------------------------


class ServeProcess:
    """``python -m gemma_local serve`` on a free loopback port, its output read on threads."""

    def __init__(self, *args: str, preexec_fn: Any = None, host: str | None = "127.0.0.1") -> None:
        # host None: no --host flag at all, the default bind.
        hosting = ["--host", host] if host is not None else []
        cmd = [sys.executable, "-m", "gemma_local", "serve", *hosting, "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=preexec_fn,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines.append), daemon=True).start()
        self.base_url: str | None = None

    @staticmethod
    def _pump(pipe, sink) -> None:
        for line in pipe:
            sink(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def wait_ready(self, timeout: float = 120.0) -> str:
        """The server's root URL once /health answers 200."""
        deadline = time.monotonic() + timeout
        while self.base_url is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start (exit {self.proc.poll()}):\n{self.stderr}")
            try:
                line = self.stdout.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("Anthropic base_url: "):
                self.base_url = line.removeprefix("Anthropic base_url: ").strip()
        assert self.base_url.startswith("http://127.0.0.1:")
        while True:
            try:
                if httpx.get(f"{self.base_url}/health", timeout=5).status_code == 200:
                    return self.base_url
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the model did not load (exit {self.proc.poll()}):\n{self.stderr}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def serve_process(*args: str, preexec_fn: Any = None, host: str | None = "127.0.0.1") -> Iterator[ServeProcess]:
    server = ServeProcess(*args, preexec_fn=preexec_fn, host=host)
    try:
        yield server
    finally:
        server.stop()


#: Small and single-threaded: the test machine has two busy cores.
SERVE_ARGS = ("--ctx", "1024", "--parallel", "2", "--threads", "1")
GRACE_S = 6.0


@dataclass
class StreamResult:
    events: list[dict[str, Any] | str] = field(default_factory=list)
    first_event: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    error: BaseException | None = None


def stream_in_thread(base_url: str, body: dict[str, Any]) -> tuple[threading.Thread, StreamResult]:
    result = StreamResult()

    def run() -> None:
        try:
            with (
                httpx.Client(base_url=base_url, timeout=120) as client,
                client.stream("POST", "/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200, r.read()
                for event in _sse_events(r):
                    result.events.append(event)
                    if isinstance(event, dict) and event.get("choices") and event["choices"][0]["delta"].get("content"):
                        result.first_event.set()
        except BaseException as e:
            result.error = e
        finally:
            result.ended_at = time.monotonic()
            result.first_event.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gracefully(sig: signal.Signals, no_eos) -> None:
    with serve_process(*SERVE_ARGS, "--shutdown-grace", str(GRACE_S)) as server:
        base_url = server.wait_ready()
        short = {"model": MODEL, "messages": HI, "max_tokens": 20, "stream": True, "logit_bias": no_eos}
        endless = {**short, "max_tokens": 4000}
        short_thread, short_result = stream_in_thread(base_url, short)
        long_thread, long_result = stream_in_thread(base_url, endless)
        assert short_result.first_event.wait(60) and long_result.first_event.wait(60)
        assert short_result.ended_at is None, "the short stream must still be in flight at the signal"

        server.proc.send_signal(sig)
        signalled_at = time.monotonic()
        # It stops accepting at once: no new connection, or a 503 on a kept-alive one.
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{base_url}/v1/chat/completions", json={**short, "stream": False}, timeout=5)

        short_thread.join(GRACE_S + 30)
        long_thread.join(GRACE_S + 30)
        code = server.proc.wait(GRACE_S + 30)

    assert short_result.error is None and long_result.error is None, (short_result.error, long_result.error)
    # The short stream finished normally within the grace period.
    assert short_result.events[-1] == "[DONE]"
    finishes = [e["choices"][0]["finish_reason"] for e in short_result.events if isinstance(e, dict) and e["choices"]]
    assert finishes[-1] == "length"
    assert short_result.ended_at is not None and short_result.ended_at - signalled_at < GRACE_S
    # The endless one was given the grace period, then ended with a clean error event (no [DONE]).
    last = long_result.events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "engine_closed", last
    assert "[DONE]" not in long_result.events
    assert long_result.ended_at is not None
    assert GRACE_S - 1 <= long_result.ended_at - signalled_at <= GRACE_S + 20
    assert code == 0, server.stderr
    assert "Traceback" not in server.stderr


# --- out of memory at load -------------------------------------------------------------------------


def _limit_address_space() -> None:
    # A safety net: even if every check failed, llama.cpp could not allocate more than this,
    # so the test can never take the machine's memory (traffic and memory stay local and small).
    limit = 6 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_absurd_context_fails_with_a_clear_message() -> None:
    # 32768 tokens × 64 slots with a full-size f16 cache: ~36 GiB for the 270M model.
    args = ("--model", "gemma-3-270m-embedded", "--ctx", "32768", "--parallel", "64", "--swa-full", "--kv-type", "f16",
            "--threads", "1")  # fmt: skip
    with serve_process(*args, preexec_fn=_limit_address_space) as server:
        code = server.proc.wait(120)
    assert code == 1, server.stderr
    message = server.stderr
    assert "Traceback" not in message
    assert "memory" in message.lower()
    assert "--ctx" in message and "quantization" in message


def test_memory_check_refuses_before_loading(monkeypatch) -> None:
    """On a machine too small for the plan, nothing is loaded: the error comes first."""
    from click.testing import CliRunner

    from gemma_local import cli_support
    from gemma_local.cli import main
    from gemma_local.memory import MachineMemory

    small = MachineMemory(total_ram=512 * 1024**2, available_ram=256 * 1024**2, gpu_backend=False)
    monkeypatch.setattr(MachineMemory, "detect", classmethod(lambda cls: small))

    def must_not_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the engine must not be loaded when the plan cannot fit")

    monkeypatch.setattr("gemma_local.engine.Engine", must_not_load)
    settings = cli_support.engine_settings(ctx=32768, parallel=8, threads=1)
    with pytest.raises(Exception) as e:
        cli_support.open_engine(settings)
    assert type(e.value).__name__ == "ModelLoadError"
    assert "0.5 GiB of RAM" in str(e.value)
    assert "--ctx" in str(e.value) and "smaller quantization" in str(e.value)
    result = CliRunner().invoke(main, ["generate", "hi", "--ctx", "32768", "--parallel", "8", "--threads", "1"])
    assert result.exit_code == 1
    assert "Not enough memory" in result.output


def test_weights_that_do_not_fit_suggest_a_smaller_quantization(monkeypatch, model_path) -> None:
    import llama_cpp

    from gemma_local.engine import model as model_module
    from gemma_local.engine.model import ContextParams, LlamaModel
    from gemma_local.errors import ModelLoadError

    def out_of_memory(path, params):
        # What llama.cpp does when it cannot allocate the weights: log why, return NULL.
        model_module.llama_log._callback(
            4, b"ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 2147483648\n", None
        )
        return None

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", out_of_memory)
    with pytest.raises(ModelLoadError) as e:
        LlamaModel(model_path, ContextParams(n_ctx_per_seq=512, n_threads=1))
    assert "failed to allocate" in e.value.message
    assert "smaller quantization" in e.value.message


def test_context_that_does_not_fit_suggests_a_smaller_context(monkeypatch, model_path) -> None:
    import llama_cpp

    from gemma_local.engine import model as model_module
    from gemma_local.engine.model import ContextParams, LlamaModel
    from gemma_local.errors import ModelLoadError

    def out_of_memory(model, params):
        model_module.llama_log._callback(4, b"llama_init_from_model: failed to allocate KV cache buffer\n", None)
        return None

    monkeypatch.setattr(llama_cpp, "llama_init_from_model", out_of_memory)
    with pytest.raises(ModelLoadError) as e:
        LlamaModel(model_path, ContextParams(n_ctx_per_seq=512, n_threads=1))
    assert "--ctx" in e.value.message and "smaller quantization" in e.value.message


# --- a full queue -----------------------------------------------------------------------------------


def test_full_queue_is_429_with_retry_after_in_every_api(live_server, engine, no_eos) -> None:
    from test_hostile_inputs import APIS

    stats = engine.stats()
    capacity = stats.slots + stats.max_queue
    occupy = {"model": MODEL, "messages": HI, "max_tokens": 2000, "stream": True, "logit_bias": no_eos}
    stop = threading.Event()

    def occupier() -> None:
        with (
            httpx.Client(base_url=live_server.base_url, timeout=120) as client,
            client.stream("POST", "/v1/chat/completions", json=occupy) as r,
        ):
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=occupier, daemon=True) for _ in range(capacity)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: engine.stats().active + engine.stats().queued >= capacity, 60, "a full engine")
        for api in APIS:
            if not api.served:
                continue
            r = httpx.post(f"{live_server.base_url}{api.path}", json=api.request("Hi"), timeout=60)
            assert r.status_code == 429, (api.name, r.text)
            assert int(r.headers["retry-after"]) >= 1
            error = api.assert_error(r)
            assert error["type"] == "rate_limit_error"
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    wait_idle(engine)


def test_stopping_refuses_new_work_and_ends_what_runs(engine, no_eos) -> None:
    """The two halves of a graceful stop, in process: 503 for new requests, then streams ended cleanly."""
    from gemma_local.server import create_app

    app = create_app(engine, server_settings())
    runtime = app.state.runtime
    server = LiveServer(app)
    body = {"model": MODEL, "messages": HI, "max_tokens": 2000, "stream": True, "logit_bias": no_eos}
    try:
        thread, result = stream_in_thread(server.base_url, body)
        assert result.first_event.wait(60)
        runtime.stop_accepting()
        refused = httpx.post(f"{server.base_url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        health = httpx.get(f"{server.base_url}/health", timeout=30)
        assert result.ended_at is None  # the stream in flight goes on
        assert runtime.end_in_flight() == 1
        thread.join(30)
    finally:
        server.stop()
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "shutting down" in refused.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "stopping"
    assert result.error is None
    last = result.events[-1]
    assert isinstance(last, dict) and last["error"]["code"] == "engine_closed"
    wait_idle(engine)


# --- the stored-responses database survives kill -9 mid-write ---------------------------------------

_STORE_WRITER = r"""
import sys
from pathlib import Path

from gemma_local.server.responses_store import ResponseStore

store = ResponseStore(Path(sys.argv[1]), max_count=100_000)
first = int(sys.argv[2])
blob = "x" * 200_000  # big rows: most of the writer's time is spent inside a write
for i in range(first, first + 100_000):
    rid = f"resp_{i:06d}"
    store.save({"id": rid, "object": "response", "output": [{"text": blob}]}, [{"role": "user", "content": blob}])
    print(rid, flush=True)  # only after the commit returned: acknowledged
"""


def test_response_store_survives_kill_9_mid_write(tmp_path) -> None:
    pytest.importorskip("gemma_local.server.responses_store")
    import random
    import sqlite3

    from gemma_local.server.responses_store import ResponseStore

    db = tmp_path / "responses.db"
    acknowledged: list[str] = []
    rng = random.Random(7)
    for cycle in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", _STORE_WRITER, str(db), str(cycle * 10_000)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        wanted = rng.randint(5, 15)
        deadline = time.monotonic() + 60
        mine: list[str] = []
        while len(mine) < wanted and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            mine.append(line.strip())
        time.sleep(rng.uniform(0, 0.05))  # somewhere inside the next write
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        assert len(mine) == wanted, writer.stderr.read() if writer.stderr else ""
        acknowledged += mine

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store = ResponseStore(db, max_count=100_000)
    for rid in acknowledged:  # every write that was acknowledged is there, whole
        stored = store.get(rid)
        assert stored is not None, rid
        assert stored.response["id"] == rid and len(stored.response["output"][0]["text"]) == 200_000
        assert len(stored.input_items[0]["content"]) == 200_000
    # Unacknowledged writes are either whole or absent, never torn; the store takes new writes.
    assert store.count() >= len(acknowledged)
    store.save({"id": "resp_after", "object": "response"}, [])
    assert store.get("resp_after") is not None
