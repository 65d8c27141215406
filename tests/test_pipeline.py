"""The request pipeline under every surface: limits, images, ownership of what it starts.

On the real engine where generation matters; a generation that nobody reads must never keep
a slot busy (a client gone while its choices were being submitted, a route failing before
its response took the generation over).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from gemma_local.engine import ChatMessage, GenerationRequest, SamplingParams, TextPart
from gemma_local.engine.types import ImageRef
from gemma_local.errors import InvalidRequestError, ModelCapabilityError
from gemma_local.pipeline import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES, Pipeline, PipelineRequest, RequestLimits


def _request(*, stop: tuple[str, ...] = (), content=(TextPart("Once upon a time"),), max_tokens=8, **sampling):
    generation = GenerationRequest(
        messages=(ChatMessage("user", tuple(content)),),
        sampling=SamplingParams(temperature=0, **sampling),
        max_tokens=max_tokens,
        stop=stop,
    )
    return PipelineRequest(endpoint="test", request_id="req-1", model="gemma-3-27b", generation=generation)


def wait_idle(engine, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while engine.stats().active and time.monotonic() < deadline:
        time.sleep(0.02)
    return engine.stats().active == 0


def test_stop_sequences_are_bounded_in_number_and_length() -> None:
    limits = RequestLimits()
    limits.check(_request(stop=tuple(f"s{i}" for i in range(MAX_STOP_SEQUENCES))))
    limits.check(_request(stop=("x" * MAX_STOP_LENGTH,)))
    with pytest.raises(InvalidRequestError) as too_many:
        limits.check(
            replace(_request(stop=tuple(f"s{i}" for i in range(MAX_STOP_SEQUENCES + 1))), stop_param="stop_sequences")
        )
    assert too_many.value.param == "stop_sequences" and f"at most {MAX_STOP_SEQUENCES}" in too_many.value.message
    with pytest.raises(InvalidRequestError) as too_long:
        limits.check(_request(stop=("x" * (MAX_STOP_LENGTH + 1),)))
    assert too_long.value.param == "stop"


def test_output_limit_defaults_to_the_hosted_4096_and_is_capped() -> None:
    limits = RequestLimits(max_output_tokens=8192)
    assert limits.output_tokens(None) == 4096
    assert limits.output_tokens(20_000) == 8192
    assert limits.output_tokens(7) == 7


def test_a_text_only_model_refuses_images_before_loading_any(engine) -> None:
    from conftest import FailingEngine

    text_only = FailingEngine(replace(engine.info, vision=False))
    pipeline = Pipeline(text_only)
    # Remote fetching is off: loading this image would be an ImageError. The vision check comes first.
    request = _request(content=(TextPart("What is it?"), ImageRef(url="https://example.invalid/a.png", param="x")))
    with pytest.raises(ModelCapabilityError):
        asyncio.run(pipeline.start(request))


class _SlowSubmit:
    """The real engine, with submissions that take a while (as a long prompt's tokenizing does)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.submitted: list = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def submit(self, request):
        time.sleep(0.3)
        stream = self._engine.submit(request)
        self.submitted.append(stream)
        return stream


def test_a_start_cancelled_while_submitting_frees_its_slots(engine, no_eos) -> None:
    assert wait_idle(engine, 30)
    slow = _SlowSubmit(engine)
    pipeline = Pipeline(slow)
    bias = {int(k): v for k, v in no_eos.items()}
    request = replace(_request(max_tokens=400, logit_bias=bias), n=2)

    async def client_leaves() -> None:
        task = asyncio.create_task(pipeline.start(request))
        await asyncio.sleep(0.1)  # inside the first submission
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(client_leaves())
    deadline = time.monotonic() + 5
    while not slow.submitted and time.monotonic() < deadline:  # the thread still submits the first
        time.sleep(0.02)
    assert slow.submitted
    assert wait_idle(engine, 5), "choices started for a cancelled request keep generating"
    time.sleep(0.4)
    assert len(slow.submitted) == 1, "the second choice was submitted after the client left"
    assert all(s.finished is not None and s.finished.finish_reason == "cancelled" for s in slow.submitted)


def test_a_route_failing_before_its_response_cancels_the_generation(live_server, engine, no_eos, monkeypatch) -> None:
    import httpx

    from gemma_local.server import openai_responses

    def broken(*args, **kwargs):
        raise RuntimeError("a bug between start and streaming")

    assert wait_idle(engine, 30)
    monkeypatch.setattr(openai_responses, "response_base", broken)
    body = {"model": "gemma-3-27b", "input": "Hi", "max_output_tokens": 400, "stream": True, "logit_bias": no_eos}
    response = httpx.post(f"{live_server.base_url}/v1/responses", json=body, timeout=60)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert wait_idle(engine, 5), "a generation nobody will read keeps its slot"
