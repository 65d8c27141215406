"""The real engine on the real Gemma 3 270M model: sampling, stops, limits, UTF-8, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
from conftest import TEST_THREADS

from gemma_local.engine import ChatMessage, Finished, GenerationRequest, SamplingParams, TextDelta
from gemma_local.engine.text_stream import StopMatcher, TextAssembler
from gemma_local.errors import ContextOverflowError, InvalidRequestError

GREEDY = SamplingParams(temperature=0.0)


def req(text: str, **kw) -> GenerationRequest:
    kw.setdefault("sampling", GREEDY)
    kw.setdefault("max_tokens", 24)
    return GenerationRequest(messages=(ChatMessage.text("user", text),), **kw)


def deltas(engine, request) -> tuple[list[TextDelta], Finished]:
    events = list(engine.submit(request))
    final = events[-1]
    assert isinstance(final, Finished)
    return [e for e in events if isinstance(e, TextDelta)], final


def test_greedy_is_deterministic(engine) -> None:
    a = engine.generate(req("Tell me about the moon."))
    b = engine.generate(req("Tell me about the moon."))
    assert a.text == b.text and a.text
    assert a.usage.completion_tokens == b.usage.completion_tokens


def test_same_seed_same_output_different_seed_differs(engine) -> None:
    def sampled(seed: int) -> str:
        return engine.generate(
            req("Write a story:", sampling=SamplingParams(temperature=1.2, seed=seed), max_tokens=32)
        ).text

    assert sampled(7) == sampled(7)
    assert len({sampled(s) for s in (1, 2, 3)}) > 1


def test_max_tokens_gives_length_and_exact_usage(engine) -> None:
    result = engine.generate(req("Count: one, two, three,", max_tokens=5))
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.usage.prompt_tokens == len(engine.prompt_tokens(req("Count: one, two, three,")))
    assert result.usage.total_tokens == result.usage.prompt_tokens + 5


def _two_token_stop(engine, prompt: str) -> tuple[str, str]:
    """A stop string that spans the boundary between two generated tokens, and the text before it."""
    parts, _ = deltas(engine, req(prompt, max_tokens=40))
    text = ""
    for a, b in itertools.pairwise(parts):
        if len(a.text.strip()) >= 2 and len(b.text.strip()) >= 2:
            stop = a.text[-2:] + b.text[:2]
            before = text + a.text[:-2]
            if stop not in before:
                return stop, before
        text += a.text
    pytest.skip("no two adjacent multi-character tokens in this output")


def test_stop_sequence_spanning_two_tokens_is_never_emitted(engine) -> None:
    stop, before = _two_token_stop(engine, "The history of Rome began")
    parts, final = deltas(engine, req("The history of Rome began", max_tokens=40, stop=(stop,)))
    streamed = "".join(p.text for p in parts)
    assert final.finish_reason == "stop" and final.stop_sequence == stop
    assert streamed == before
    assert stop not in streamed


def test_stop_matcher_holds_back_partial_matches() -> None:
    m = StopMatcher(("END",))
    assert m.feed("abcE") == ("abc", None)
    assert m.feed("N") == ("", None)
    out, hit = m.feed("D and more")
    assert out == "" and hit is not None and hit.text_before == "" and hit.stop == "END"
    m = StopMatcher(("END",))
    assert m.feed("xE") == ("x", None)
    assert m.feed("x") == ("Ex", None)


def test_utf8_split_across_tokens_is_reassembled() -> None:
    asm = TextAssembler()
    data = "héllo 日本語 🙂".encode()
    out = "".join(asm.push(data[i : i + 1])[0] for i in range(len(data))) + asm.finish()
    assert out == "héllo 日本語 🙂"


@pytest.mark.parametrize(
    "prompt", ["日本の首都は", "Привет! Как дела? Расскажи", "مرحبا، كيف حالك", "Emoji story: 🙂🚀"]
)
def test_multilingual_stream_is_valid_utf8(engine, prompt: str) -> None:
    parts, final = deltas(engine, req(prompt, max_tokens=30, sampling=SamplingParams(temperature=0.9, seed=3)))
    for p in parts:
        p.text.encode("utf-8")  # would raise on lone surrogates
        assert "\ufffd" not in p.text
    assert final.usage.completion_tokens == 30 or final.finish_reason == "stop"


def test_cancellation_frees_the_engine(engine) -> None:
    stream = engine.submit(req("Write a very long essay about rivers.", max_tokens=2000))
    events = iter(stream)
    first = next(events)
    assert isinstance(first, TextDelta)
    t0 = time.perf_counter()
    stream.cancel()
    rest = list(events)  # the stream still ends properly, with a cancelled Finished event
    assert isinstance(rest[-1], Finished) and rest[-1].finish_reason == "cancelled"
    # The next request is served at once.
    result = engine.generate(req("Hello", max_tokens=4))
    assert result.usage.completion_tokens == 4
    assert time.perf_counter() - t0 < 30
    deadline = time.time() + 5
    while engine.stats().active and time.time() < deadline:
        time.sleep(0.05)
    assert engine.stats().active == 0


def test_cancel_via_async_iteration_exit(engine) -> None:
    async def consume_two() -> None:
        stream = engine.submit(req("Write a long poem about the sea.", max_tokens=2000))
        n = 0
        async for _event in stream:
            n += 1
            if n == 2:
                break
        # The abandoned async generator is finalised by the event loop on its next turns.
        for _ in range(10):
            await asyncio.sleep(0)
        assert stream.cancel_requested

    asyncio.run(consume_two())
    deadline = time.time() + 5
    while engine.stats().active and time.time() < deadline:
        time.sleep(0.05)
    assert engine.stats().active == 0


def test_prompt_that_fills_the_context_is_a_typed_error(engine) -> None:
    with pytest.raises(ContextOverflowError) as info:
        engine.submit(req("word " * 3000))
    assert info.value.n_ctx == 2048 and info.value.n_prompt_tokens > 2048
    assert "2048" in info.value.message


def test_bad_logit_bias_is_invalid_request(engine) -> None:
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        engine.submit(req("hi", sampling=SamplingParams(temperature=0, logit_bias={10**9: 5.0})))


def test_logit_bias_and_logprobs(engine) -> None:
    baseline = engine.generate(req("The capital of France is", max_tokens=1, logprobs=3))
    first = baseline.logprobs[0]
    assert len(first.top) == 3 and first.top[0][1] >= first.top[1][1] >= first.top[2][1]
    assert first.logprob <= 0 and abs(first.logprob - first.top[0][1]) < 1e-6  # greedy picks the top one
    banned = engine.model.tokenize(first.token)[0]
    biased = engine.generate(
        req("The capital of France is", max_tokens=1, sampling=SamplingParams(temperature=0, logit_bias={banned: -100}))
    )
    assert biased.text != baseline.text


def test_generation_from_another_thread_while_iterating(engine) -> None:
    results: dict[str, str] = {}

    def worker(name: str) -> None:
        results[name] = engine.generate(req(f"Story number {name}:", max_tokens=8)).text

    threads = [threading.Thread(target=worker, args=(str(i),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3


def test_cancel_all_ends_running_and_waiting_generations(engine, token_ids) -> None:
    endless = SamplingParams(temperature=0.0, logit_bias={token_ids["<eos>"]: -100, token_ids["<end_of_turn>"]: -100})
    deadline = time.time() + 30
    while engine.stats().active and time.time() < deadline:
        time.sleep(0.05)
    slots = engine.stats().slots
    streams = [engine.submit(req(f"Essay {i}:", sampling=endless, max_tokens=2000)) for i in range(slots + 1)]
    while (engine.stats().active, engine.stats().queued) != (slots, 1) and time.time() < deadline:
        time.sleep(0.02)
    assert (engine.stats().active, engine.stats().queued) == (slots, 1)  # one is waiting for a slot
    assert engine.cancel_all() == slots + 1
    finals = [list(stream)[-1] for stream in streams]
    assert [f.finish_reason for f in finals] == ["cancelled"] * (slots + 1)
    assert engine.cancel_all() == 0


def test_close_during_a_long_prefill_stops_between_micro_batches(model_path) -> None:
    """Closing waits until the scheduler thread is gone (freeing the model under a running
    ``llama_decode`` is a use-after-free), and that wait is one micro-batch, not the prompt.

    n_batch is large enough for the whole 1500-token prompt, so a step of n_batch tokens would
    be one llama_decode call of ~24 micro-batches of 64 that close would have to sit out.
    """
    from gemma_local.engine import ContextParams, Engine

    params = ContextParams(n_ctx_per_seq=2048, n_seq=1, n_batch=2048, n_ubatch=64, n_threads=TEST_THREADS)
    eng = Engine(model_path, params)
    long = GenerationRequest(prompt=" ".join(["history"] * 1500), max_tokens=1)
    try:
        eng.generate(req("Hi", max_tokens=1))  # warm-up: the first decode allocates
        prefill_s = eng.generate(long).timings.prompt_s
        eng.clear_prefix_cache()
        scheduler_thread = eng._scheduler._thread
        stream = eng.submit(long)
        time.sleep(prefill_s / 4)
        assert stream.finished is None  # well inside the prefill
        started = time.perf_counter()
        eng.close()
        close_s = time.perf_counter() - started
    finally:
        eng.close()
    assert not scheduler_thread.is_alive()
    events = list(stream)
    assert len(events) == 1 and events[0].finish_reason == "cancelled"
    assert close_s < prefill_s / 4, (close_s, prefill_s)
