"""/v1/messages against a real server and the real 270M model, via the official Anthropic SDK.

Messages are created and streamed, tokens counted, and every error status checked in
Anthropic's envelope. The model is a base model, so its text is arbitrary: the checks are on
structure, token counts and determinism; ``logit_bias`` (a gemma-local extension, sent through
``extra_body`` like ``temperature``) forces known text where a test needs it.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import anthropic
import httpx
import pytest
from conftest import TEST_API_KEY, FailingEngine, LiveServer, server_settings, wait_engine_idle

from gemma_local.engine import ChatMessage, GenerationRequest, TextPart
from gemma_local.engine.tools import ToolSpec, render_tool_instructions
from gemma_local.engine.types import ToolCall
from gemma_local.images import image_from_base64
from gemma_local.pipeline.conversation import assistant_message

MODEL = "gemma-3-27b"
PROMPT = "Write a short poem about the sea."
HI = [{"role": "user", "content": PROMPT}]


def prompt_len(engine, messages: list[ChatMessage], *, prefill: bool = False) -> int:
    request = GenerationRequest(messages=tuple(messages), continue_final_message=prefill)
    return len(engine.prompt_tokens(request))


def png_base64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def assert_anthropic_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) pairs; every event must have both lines."""
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        out.append((name_line[len("event: ") :], json.loads(data_line[len("data: ") :])))
    return out


# --- create -------------------------------------------------------------------------------------


def test_create_shape_and_usage(anthropic_client, engine, no_eos) -> None:
    m = anthropic_client.messages.create(model=MODEL, max_tokens=5, messages=HI, extra_body={"logit_bias": no_eos})
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    [block] = m.content
    assert block.type == "text" and block.text
    u = m.usage
    assert u.output_tokens == 5
    # Anthropic's accounting: input_tokens are the prompt tokens not read from the cache.
    assert u.input_tokens + u.cache_read_input_tokens == prompt_len(engine, [ChatMessage.text("user", PROMPT)])
    assert u.cache_creation_input_tokens == 0 and u.input_tokens >= 1


def test_stop_sequence_reports_the_match(anthropic_client, force_hello) -> None:
    m = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=16,
        messages=HI,
        stop_sequences=["never", "lloHe"],
        extra_body={"logit_bias": force_hello},
    )
    assert m.content[0].text == "He"
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "lloHe")


def test_end_turn(anthropic_client, token_ids) -> None:
    # The end-of-turn token forced first: an empty answer that ended by itself.
    m = anthropic_client.messages.create(
        model=MODEL, max_tokens=8, messages=HI, extra_body={"logit_bias": {str(token_ids["<end_of_turn>"]): 100}}
    )
    assert (m.stop_reason, m.stop_sequence, m.content) == ("end_turn", None, [])
    assert m.usage.output_tokens == 1


def test_every_block_reaches_the_prompt(anthropic_client, engine) -> None:
    """System blocks, images, replayed tool use, tool results and an assistant prefill."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is 2+2? Look:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png_base64()}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me add."},
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 2}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "4"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": True},
                {"type": "text", "text": "So?"},
            ],
        },
        {"role": "assistant", "content": "The answer is"},
    ]
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use digits."}]
    tools = [{"name": "add", "description": "Add", "input_schema": {"type": "object", "properties": {}}}]
    m = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=2,
        system=system,
        messages=messages,
        tools=tools,
        tool_choice={"type": "none"},
        extra_body={"temperature": 0},
    )
    counted = anthropic_client.messages.count_tokens(
        model=MODEL, system=system, messages=messages, tools=tools, tool_choice={"type": "none"}
    )
    expected = [
        ChatMessage.text("system", "Be brief.\n\nUse digits."),
        ChatMessage(
            role="user", content=(TextPart("What is 2+2? Look:"), image_from_base64(png_base64(), "image/png"))
        ),
        assistant_message([TextPart("Let me add.")], [ToolCall(id="toolu_1", name="add", arguments={"a": 2, "b": 2})]),
        ChatMessage.text("tool", "4"),
        ChatMessage(role="tool", content=(TextPart("Error:"), TextPart("timeout"))),
        ChatMessage.text("user", "So?"),
        assistant_message([TextPart("The answer is")]),
    ]
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == prompt_len(engine, expected, prefill=True)
    assert counted.input_tokens == prompt_len(engine, expected, prefill=True)
    assert m.stop_reason in ("end_turn", "max_tokens")


def test_count_tokens_matches_the_prompt(anthropic_client, engine) -> None:
    counted = anthropic_client.messages.count_tokens(model=MODEL, system="Be brief.", messages=HI)
    expected = [ChatMessage.text("system", "Be brief."), ChatMessage.text("user", PROMPT)]
    assert counted.input_tokens == prompt_len(engine, expected)


def test_sampling_options_through_extra_body(anthropic_client, engine) -> None:
    def run(seed: int) -> str:
        # Alone and cold: a prompt found in the prefix cache has only its last token decoded,
        # in a smaller batch whose rounding can move a temperature-1 draw.
        wait_engine_idle(engine)
        engine.clear_prefix_cache()
        m = anthropic_client.messages.create(
            model=MODEL,
            max_tokens=6,
            messages=HI,
            metadata={"user_id": "u1"},
            extra_body={"temperature": 1.0, "top_p": 0.95, "top_k": 40, "seed": seed},
        )
        return m.content[0].text if m.content else ""

    first = run(1234)
    assert run(1234) == first
    assert len({first, run(1), run(2)}) > 1, "different seeds never changed the output"


# --- streaming ----------------------------------------------------------------------------------


def test_stream_helper_text_stream_and_final_message(anthropic_client, force_hello) -> None:
    with anthropic_client.messages.stream(
        model=MODEL, max_tokens=16, messages=HI, stop_sequences=["lloHe"], extra_body={"logit_bias": force_hello}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "He"
    assert final.content[0].text == "He"
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "lloHe")
    assert final.usage.output_tokens >= 1 and final.usage.input_tokens >= 1


def test_raw_stream_event_sequence(http, engine, no_eos) -> None:
    body = {"model": MODEL, "max_tokens": 3, "messages": HI, "stream": True, "logit_bias": no_eos}
    r = http.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == prompt_len(engine, [ChatMessage.text("user", PROMPT)])
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert all(data["index"] == 0 and data["delta"]["type"] == "text_delta" for _, data in events[3:-3])
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patch",
    [
        {"max_tokens": None},
        {"max_tokens": 0},
        {"temperature": 2.5},
        {"top_k": -1},
        {"messages": []},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
        {"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "g"}},
        {"tools": [{"type": "code_execution_20250522", "name": "code_execution"}]},
    ],
)
def test_invalid_request_is_400(http, patch: dict) -> None:
    body = {"model": MODEL, "max_tokens": 1, "messages": HI, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    assert_anthropic_error(http.post("/v1/messages", json=body), 400, "invalid_request_error")


def test_bad_image_is_400(http) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": [image]}]}
    message = assert_anthropic_error(http.post("/v1/messages", json=body), 400, "invalid_request_error")
    assert "PNG" in message


def test_sdk_error_classes(anthropic_client) -> None:
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client.messages.create(model=MODEL, max_tokens=1, messages=[])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        anthropic_client.messages.create(model="gemma-3-4b", max_tokens=1, messages=HI)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client.messages.count_tokens(model="gemma-3-4b", messages=HI)


def test_unknown_route_and_method_use_the_anthropic_envelope(http) -> None:
    assert_anthropic_error(http.post("/v1/messages/batches", json={}), 404, "not_found_error")
    assert_anthropic_error(http.get("/v1/messages"), 405, "invalid_request_error")


def test_auth_headers(auth_server) -> None:
    def sdk(**credentials) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=auth_server.base_url, _strict_response_validation=True, max_retries=0, timeout=60, **credentials
        )

    small = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    with pytest.raises(anthropic.AuthenticationError) as e:
        sdk(api_key="wrong").messages.create(**small)
    assert e.value.body["error"]["type"] == "authentication_error"
    assert sdk(api_key=TEST_API_KEY).messages.create(**small).usage.output_tokens == 1
    counted = sdk(auth_token=TEST_API_KEY).messages.count_tokens(model=MODEL, messages=small["messages"])
    assert counted.input_tokens > 0
    with httpx.Client(base_url=auth_server.base_url, timeout=60) as client:
        headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2099-01-01", "anthropic-beta": "anything-2030"}
        assert client.post("/v1/messages", json=small, headers=headers).status_code == 200
        assert_anthropic_error(client.post("/v1/messages", json=small), 401, "authentication_error")
        # 413: the auth server takes 4 KiB bodies at most.
        big = {**small, "messages": [{"role": "user", "content": "a" * 5000}]}
        assert_anthropic_error(client.post("/v1/messages", json=big, headers=headers), 413, "request_too_large")


def test_queue_full_is_429(live_server, engine, no_eos) -> None:
    """Fill every slot and the queue (a streamed chat request with n choices), then ask for a message."""
    stats = engine.stats()
    capacity = stats.slots + stats.max_queue
    chat = {"model": MODEL, "messages": HI, "max_tokens": 200, "n": capacity, "stream": True, "logit_bias": no_eos}
    with (
        httpx.Client(base_url=live_server.base_url, timeout=60) as client,
        client.stream("POST", "/v1/chat/completions", json=chat) as held,
    ):
        assert held.status_code == 200
        deadline = time.monotonic() + 30
        while engine.stats().queued < stats.max_queue:
            assert time.monotonic() < deadline, engine.stats()
            time.sleep(0.02)
        body = {"model": MODEL, "max_tokens": 1, "messages": HI}
        r = client.post("/v1/messages", json=body)
        assert_anthropic_error(r, 429, "rate_limit_error")
        assert int(r.headers["retry-after"]) >= 1
    # Leaving the block closed the held stream: everything it submitted stops.
    deadline = time.monotonic() + 30
    while engine.stats().active or engine.stats().queued:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.02)


def test_model_loading_is_503(engine) -> None:
    from gemma_local.errors import ModelLoadError
    from gemma_local.server import create_app

    release = threading.Event()

    def slow_load():
        release.wait(30)
        raise ModelLoadError("test: no model")

    server = LiveServer(create_app(slow_load, server_settings()))
    try:
        body = {"model": MODEL, "max_tokens": 1, "messages": HI}
        r = httpx.post(f"{server.base_url}/v1/messages", json=body, timeout=30)
        assert_anthropic_error(r, 503, "overloaded_error")
        assert r.headers["retry-after"] == "5"
    finally:
        release.set()
        server.stop()


def test_generation_failure_is_500_or_an_error_event(engine) -> None:
    from gemma_local.server import create_app

    server = LiveServer(create_app(FailingEngine(engine.info), server_settings()))
    try:
        body = {"model": MODEL, "max_tokens": 5, "messages": HI}
        r = httpx.post(f"{server.base_url}/v1/messages", json=body, timeout=30)
        assert_anthropic_error(r, 500, "api_error")
        raw = httpx.post(f"{server.base_url}/v1/messages", json={**body, "stream": True}, timeout=30)
        client = anthropic.Anthropic(
            base_url=server.base_url, api_key="x", _strict_response_validation=True, max_retries=0
        )
        seen: list[str] = []
        with (
            pytest.raises(anthropic.APIStatusError, match="no room left in the KV cache"),
            client.messages.stream(model=MODEL, max_tokens=5, messages=HI) as stream,
        ):
            for text in stream.text_stream:
                seen.append(text)
    finally:
        server.stop()
    assert raw.status_code == 200
    events = sse_events(raw.text)
    assert [name for name, _ in events][-1] == "error"
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "Generation failed: no room left in the KV cache."},
    }
    assert "".join(seen) == "partial"


# --- tool use ------------------------------------------------------------------------------------

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]


def test_forced_tool_use_and_its_result(anthropic_client, engine) -> None:
    m = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=48,
        messages=QUESTION,
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 0},
    )
    assert (m.stop_reason, m.stop_sequence) == ("tool_use", None)
    [use] = m.content
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_")
    assert use.input["city"] in ("Paris", "Tokyo")

    # The client runs the tool and sends the result back, replaying the model's turn.
    follow_up = [
        *QUESTION,
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]},
    ]
    answer = anthropic_client.messages.create(
        model=MODEL, max_tokens=3, messages=follow_up, tools=[WEATHER], extra_body={"temperature": 0}
    )
    spec = ToolSpec(WEATHER["name"], WEATHER["description"], WEATHER["input_schema"])
    expected = [
        ChatMessage.text("system", render_tool_instructions([spec], "auto")),
        ChatMessage.text("user", "What's the weather in Paris?"),
        assistant_message([], [ToolCall(id=use.id, name="get_weather", arguments=use.input)]),
        ChatMessage.text("tool", "Sunny"),
    ]
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens == prompt_len(engine, expected)


def test_streamed_tool_use(anthropic_client, http) -> None:
    request = {
        "model": MODEL,
        "max_tokens": 48,
        "messages": [{"role": "user", "content": "What's the weather in Tokyo?"}],
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "temperature": 0,
    }
    with anthropic_client.messages.stream(**{k: v for k, v in request.items() if k != "temperature"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = final.content
    assert use.type == "tool_use" and use.input["city"] in ("Paris", "Tokyo")

    events = sse_events(http.post("/v1/messages", json={**request, "stream": True}).text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["input"] == {} and block["id"].startswith("toolu_")
    assert events[3][1]["delta"]["type"] == "input_json_delta"
    assert json.loads(events[3][1]["delta"]["partial_json"])["city"] in ("Paris", "Tokyo")
    assert events[5][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_structured_output_through_output_config(anthropic_client) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    m = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=24,
        messages=[{"role": "user", "content": "Is the sea salty?"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body={"temperature": 0},
    )
    assert m.stop_reason == "end_turn"
    assert json.loads(m.content[0].text)["answer"] in ("yes", "no")


def test_keepalive_yields_none_while_the_stream_is_quiet() -> None:
    import asyncio

    from gemma_local.server.anthropic_messages import _with_keepalive

    async def slow():
        yield "a"
        await asyncio.sleep(0.35)
        yield "b"

    async def collect() -> list:
        return [item async for item in _with_keepalive(slow(), 0.1)]

    items = asyncio.run(collect())
    assert items[0] == "a" and items[-1] == "b"
    assert 2 <= items.count(None) <= 4  # pings while the source was silent
