"""POST /v1/chat/completions against a real server and the real 270M model, via the official SDK.

The 270M model is a base model, so the text itself is arbitrary: these tests check structure,
arithmetic and determinism. Where exact text is needed, ``logit_bias`` forces a token.
"""

from __future__ import annotations

import openai
import pytest
from conftest import wait_engine_idle

from gemma_local.engine import ChatMessage, GenerationRequest

MODEL = "gemma-3-27b"
HI = [{"role": "user", "content": "Write a short poem about the sea."}]


def prompt_len(engine, messages: list[ChatMessage]) -> int:
    return len(engine.prompt_tokens(GenerationRequest(messages=tuple(messages))))


def test_non_streaming_shape_and_usage(openai_client, engine, no_eos) -> None:
    r = openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5, logit_bias=no_eos)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.logprobs is None
    u = r.usage
    assert u.prompt_tokens == prompt_len(engine, [ChatMessage.text("user", HI[0]["content"])])
    assert u.completion_tokens == 5
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details is not None
    assert 0 <= u.prompt_tokens_details.cached_tokens < u.prompt_tokens


def test_prefix_cache_shows_in_cached_tokens(openai_client) -> None:
    messages = [{"role": "user", "content": "Tell me about caching of prompts in a language model server."}]
    openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    again = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    # Everything but the last prompt token (decoded again for its logits) comes from the cache.
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_streaming_chunks_and_usage(openai_client, no_eos) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model=MODEL,
            messages=HI,
            max_tokens=6,
            logit_bias=no_eos,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first, *middle, finish, usage_chunk = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None for c in [*middle, finish])
    assert all(c.choices[0].finish_reason is None for c in middle)
    assert finish.choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])
    assert usage_chunk.choices == []
    assert usage_chunk.usage.completion_tokens == 6
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 6
    assert "".join(c.choices[0].delta.content or "" for c in middle)


def test_stream_without_usage_has_no_usage_chunk(http) -> None:
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 2, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in r.text


def test_stream_helper_with_stop_string(openai_client, force_hello) -> None:
    # Forced output is HelloHelloHello...; the comma-separated stop holds back "lloHe" across tokens.
    with openai_client.chat.completions.stream(
        model=MODEL, messages=HI, max_tokens=16, logit_bias=force_hello, stop="zzz,lloHe"
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == "He"
    assert final.choices[0].message.content == "He"
    assert final.choices[0].finish_reason == "stop"


def test_stop_as_array_and_string(openai_client, force_hello) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=16, logit_bias=force_hello, stop=["never", "oHel"]
    )
    assert r.choices[0].message.content == "Hell"
    assert r.choices[0].finish_reason == "stop"
    r = openai_client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=16, logit_bias=force_hello, stop="loHello,,"
    )
    assert r.choices[0].message.content == "Hel"


def test_seed_determinism(openai_client, engine) -> None:
    def run(seed: int) -> str:
        # Alone and cold: a prompt found in the prefix cache has only its last token decoded,
        # in a smaller batch whose rounding can move a temperature-1 draw.
        wait_engine_idle(engine)
        engine.clear_prefix_cache()
        r = openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, temperature=1.0, seed=seed)
        return r.choices[0].message.content

    first = run(1234)
    assert run(1234) == first
    assert len({first, run(1), run(2)}) > 1, "different seeds never changed the output"


def test_n_choices(openai_client, no_eos) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=4, n=2, seed=7, temperature=1.0, logit_bias=no_eos
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in r.choices)
    # The prompt counts once; the completions add up.
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_n_choices_streaming(openai_client, no_eos) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model=MODEL,
            messages=HI,
            max_tokens=3,
            n=2,
            logit_bias=no_eos,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role]
    finishes = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert sorted(roles) == [0, 1] and finishes == [0, 1]
    assert chunks[-1].usage.completion_tokens == 6


def test_logprobs(openai_client) -> None:
    r = openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
        assert item.logprob <= item.top_logprobs[0].logprob + 1e-6
    text = "".join(bytes(item.bytes).decode("utf-8", "replace") for item in content)
    assert text.startswith(r.choices[0].message.content) or r.choices[0].finish_reason == "stop"


def test_logit_bias_forces_token(openai_client, force_hello) -> None:
    r = openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3, logit_bias=force_hello)
    assert r.choices[0].message.content == "HelloHelloHello"


def test_sampling_options_and_unknown_keys_accepted(openai_client) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_completion_tokens=2,
        temperature=0,
        top_p=0.9,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        user="someone",
        metadata={"a": "b"},
        store=False,
        extra_body={"web_search_linkup": False, "disable_formatting": True, "some_future_key": {"x": 1}},
    )
    assert r.usage.completion_tokens <= 2


def test_roles_and_multipart_content(openai_client, engine) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": "Think."}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "user", "content": "So?"},
    ]
    r = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    # system + developer fold into the first user turn; every message reaches the prompt.
    minimal = prompt_len(engine, [ChatMessage.text("user", "So?")])
    assert r.usage.prompt_tokens > minimal + 20


def test_own_and_family_model_ids(openai_client) -> None:
    for model in ("gemma-3-270m-embedded", "gemma-3-270m"):
        r = openai_client.chat.completions.create(model=model, messages=HI, max_tokens=1)
        assert r.model == model


def test_other_gemma_model_is_404(openai_client) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.chat.completions.create(model="gemma-3-4b", messages=HI, max_tokens=1)
    assert e.value.code == "model_not_found"
    assert e.value.param == "model"
