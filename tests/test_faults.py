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


@pytest.fixture(scope="module")
def no_eos(engine) -> dict[str, int]:
    ids = [engine.model.tokenize(t, special=True)[0] for t in ("<eos>", "<end_of_turn>")]
    return {str(i): -100 for i in ids}


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
