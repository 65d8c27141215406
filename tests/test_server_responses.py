"""/v1/responses against a real server and the real 270M model, via the official OpenAI SDK.

Responses are created, streamed, stored, chained with ``previous_response_id`` (also across
a server restart), listed and deleted. The model is a base model, so its text is arbitrary:
the checks are on structure, token counts and determinism; ``logit_bias`` (a gemma-local
extension) forces known text where a test needs it.
"""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from typing import Literal

import httpx
import openai
import pytest
from conftest import FailingEngine, LiveServer, server_settings

from gemma_local.engine import ChatMessage, GenerationRequest, TextPart
from gemma_local.engine.tools import ToolSpec, render_tool_instructions
from gemma_local.engine.types import ToolCall
from gemma_local.pipeline.conversation import assistant_message
from gemma_local.server.responses_store import ResponseStore

MODEL = "gemma-3-27b"
PROMPT = "Write a short poem about the sea."


def prompt_len(engine, messages: list[ChatMessage]) -> int:
    return len(engine.prompt_tokens(GenerationRequest(messages=tuple(messages))))


def png_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (20, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def assert_openai_error(response: httpx.Response, status: int, *, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


# --- create ------------------------------------------------------------------------------------


def test_create_shape_usage_and_echo(openai_client, engine, no_eos) -> None:
    r = openai_client.responses.create(
        model=MODEL,
        input=PROMPT,
        max_output_tokens=5,
        metadata={"case": "shape"},
        extra_body={"logit_bias": no_eos},
    )
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.error is None
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.status == "incomplete"
    assert [part.type for part in message.content] == ["output_text"]
    assert r.output_text == message.content[0].text and r.output_text
    assert r.usage.input_tokens == prompt_len(engine, [ChatMessage.text("user", PROMPT)])
    assert r.usage.output_tokens == 5
    assert r.usage.total_tokens == r.usage.input_tokens + 5
    assert 0 <= r.usage.input_tokens_details.cached_tokens < r.usage.input_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    # What was asked is echoed back, with the hosted defaults filled in.
    assert (r.temperature, r.top_p, r.max_output_tokens) == (0.7, 1.0, 5)
    assert r.metadata == {"case": "shape"} and r.store is True and r.tools == [] and r.tool_choice == "auto"
    assert r.text.format.type == "text" and r.previous_response_id is None and r.instructions is None
    assert r.completed_at >= r.created_at


def test_completed_status_with_stop(openai_client, force_hello) -> None:
    # Forced output is HelloHello...; the stop sequence (an extension here) ends it inside the 2nd token.
    r = openai_client.responses.create(
        model=MODEL, input=PROMPT, max_output_tokens=16, extra_body={"logit_bias": force_hello, "stop": ["lloHe"]}
    )
    assert r.status == "completed" and r.incomplete_details is None
    assert r.output_text == "He"
    assert r.output[0].status == "completed"


def test_input_items_become_the_conversation(openai_client, engine) -> None:
    """Every kind of input item reaches the prompt, exactly as the same conversation would."""
    items = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "input_text", "text": "Answer in English."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_replayed",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Let me add.", "annotations": [], "logprobs": []}],
        },
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "add", "arguments": '{"a": 2, "b": 2}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "4"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": "So?"},
    ]
    r = openai_client.responses.create(
        model=MODEL, input=items, instructions="You are a calculator.", max_output_tokens=1, temperature=0
    )
    expected = [
        ChatMessage.text("system", "You are a calculator."),
        ChatMessage.text("system", "Be brief."),
        ChatMessage.text("developer", "Answer in English."),
        ChatMessage.text("user", "What is 2+2?"),
        assistant_message([TextPart("Let me add.")]),
        assistant_message([], [ToolCall(id="call_1", name="add", arguments={"a": 2, "b": 2})]),
        ChatMessage.text("tool", "4"),
        ChatMessage.text("user", "So?"),
    ]
    assert r.usage.input_tokens == prompt_len(engine, expected)
    assert r.instructions == "You are a calculator."


def test_image_input(openai_client) -> None:
    text_only = openai_client.responses.create(model=MODEL, input="What is this?", max_output_tokens=1, store=False)
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": png_data_url(), "detail": "low"},
    ]
    r = openai_client.responses.create(
        model=MODEL, input=[{"role": "user", "content": content}], max_output_tokens=1, store=False
    )
    assert r.usage.input_tokens > text_only.usage.input_tokens  # the image's tokens are in the prompt


def test_logprobs_through_include(openai_client) -> None:
    r = openai_client.responses.create(
        model=MODEL,
        input=PROMPT,
        max_output_tokens=3,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
        store=False,
    )
    logprobs = r.output[0].content[0].logprobs
    assert len(logprobs) == r.usage.output_tokens
    assert all(lp.logprob <= 0 and len(lp.top_logprobs) == 2 for lp in logprobs)


# --- streaming -----------------------------------------------------------------------------------


def test_stream_helper_and_final_response(openai_client, force_hello) -> None:
    with openai_client.responses.stream(
        model=MODEL,
        input=PROMPT,
        max_output_tokens=16,
        extra_body={"logit_bias": force_hello, "stop": "zzz,lloHe"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "He"
    assert final.output_text == "He" and final.status == "completed"
    assert final.id == events[0].response.id and final.usage.output_tokens >= 1
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    # The streamed response is stored like any other, and can be replayed as a stream.
    stored = openai_client.responses.retrieve(final.id)
    assert stored.output_text == "He"
    replayed = list(openai_client.responses.retrieve(final.id, stream=True))
    assert [e.type for e in replayed] == [*types[:5], *types[-4:]]  # the text comes as one delta
    assert replayed[-1].response.model_dump() == stored.model_dump()
    assert replayed[2].item.id == stored.output[0].id
    with openai_client.responses.stream(response_id=final.id, starting_after=3) as again:
        later = list(again)
        assert again.get_final_response().output_text == "He"
    assert [e.sequence_number for e in later] == list(range(4, 9))


def test_raw_stream_names_every_event_and_ends_incomplete(http, no_eos) -> None:
    body = {"model": MODEL, "input": PROMPT, "max_output_tokens": 3, "stream": True, "logit_bias": no_eos}
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in r.text.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == name_line[len("event: ") :]
        events.append(data)
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 3
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == deltas


# --- stored state ------------------------------------------------------------------------------


def test_retrieve_input_items_and_delete(openai_client) -> None:
    items = [{"role": "user", "content": f"Message number {i}."} for i in range(5)]
    created = openai_client.responses.create(model=MODEL, input=items, max_output_tokens=2, temperature=0)
    got = openai_client.responses.retrieve(created.id)
    assert got.model_dump() == created.model_dump()

    newest_first = openai_client.responses.input_items.list(created.id)
    texts = [item.content[0].text for item in newest_first.data]
    assert texts == [f"Message number {i}." for i in reversed(range(5))]
    assert all(item.id.startswith("msg_") and item.role == "user" for item in newest_first.data)
    assert newest_first.has_more is False and newest_first.first_id == newest_first.data[0].id

    page = openai_client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [item.content[0].text for item in page.data] == ["Message number 0.", "Message number 1."]
    assert page.has_more is True and page.last_id == page.data[-1].id
    rest = openai_client.responses.input_items.list(created.id, order="asc", after=page.last_id)
    assert [item.content[0].text for item in rest.data] == [f"Message number {i}." for i in (2, 3, 4)]
    # The SDK's auto-pagination walks the pages with `after`.
    every = list(openai_client.responses.input_items.list(created.id, order="asc", limit=2))
    assert len(every) == 5

    openai_client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.input_items.list(created.id)


def test_previous_response_id_chains_the_conversation(openai_client, engine) -> None:
    first = openai_client.responses.create(
        model=MODEL, input="Name a colour.", instructions="Answer in one word.", max_output_tokens=4, temperature=0
    )
    second = openai_client.responses.create(
        model=MODEL, input="And another?", previous_response_id=first.id, max_output_tokens=4, temperature=0
    )
    assert second.previous_response_id == first.id
    # The earlier input and output come first; the earlier instructions are not inherited.
    expected = [
        ChatMessage.text("user", "Name a colour."),
        assistant_message([TextPart(first.output_text)]),
        ChatMessage.text("user", "And another?"),
    ]
    assert second.usage.input_tokens == prompt_len(engine, expected)
    listed = openai_client.responses.input_items.list(second.id, order="asc")
    assert [(item.type, item.role) for item in listed.data] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert listed.data[1].id == first.output[0].id
    # The shared prefix was reused from the prefix cache.
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_store_false_keeps_nothing(openai_client, http) -> None:
    r = openai_client.responses.create(model=MODEL, input=PROMPT, max_output_tokens=1, store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(r.id)
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 1, "previous_response_id": r.id}
    error = assert_openai_error(http.post("/v1/responses", json=body), 404, param="previous_response_id")
    assert error["code"] == "previous_response_not_found" and r.id in error["message"]


def test_unknown_previous_response_id_with_sdk(openai_client) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_nope", max_output_tokens=1)
    assert e.value.param == "previous_response_id"


def test_chain_survives_a_server_restart(engine, tmp_path) -> None:
    from gemma_local.server import create_app

    db = tmp_path / "responses.db"

    def client(server: LiveServer) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
        )

    server = LiveServer(create_app(engine, server_settings(responses_db=db)))
    try:
        first = client(server).responses.create(model=MODEL, input="Name a fruit.", max_output_tokens=3, temperature=0)
    finally:
        server.stop()
    restarted = LiveServer(create_app(engine, server_settings(responses_db=db)))
    try:
        sdk = client(restarted)
        assert sdk.responses.retrieve(first.id).model_dump() == first.model_dump()
        second = sdk.responses.create(
            model=MODEL, input="Another one?", previous_response_id=first.id, max_output_tokens=3, temperature=0
        )
        listed = sdk.responses.input_items.list(second.id, order="asc")
    finally:
        restarted.stop()
    assert [item.type for item in listed.data] == ["message", "message", "message"]
    assert listed.data[1].content[0].text == first.output_text
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 2


def test_store_retention_by_count_and_age(tmp_path, monkeypatch) -> None:
    store = ResponseStore(tmp_path / "r.db", max_count=2, max_age_s=3600)

    def save(rid: str) -> None:
        store.save({"id": rid, "output": []}, [{"id": "msg_1", "type": "message"}])

    for rid in ("resp_a", "resp_b", "resp_c"):
        save(rid)
    assert store.get("resp_a") is None  # the oldest went first
    assert store.get("resp_b") is not None and store.get("resp_c") is not None
    assert store.get("resp_c").input_items == [{"id": "msg_1", "type": "message"}]
    assert store.count() == 2
    # Two hours later both are past the age limit: not returned, and deleted at the next write.
    now = time.time()
    monkeypatch.setattr("gemma_local.server.responses_store.time.time", lambda: now + 7200)
    assert store.get("resp_b") is None
    save("resp_d")
    assert store.count() == 1
    assert store.delete("resp_d") and not store.delete("resp_d")


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": "1"}, "top_p"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0]"),
        ({"input": [{"type": "computer_call", "id": "cu_1"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"tools": [{"type": "image_generation"}]}, "tools"),
        (
            {"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}},
            "tool_choice",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}, "input[0].arguments"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ],
)
def test_invalid_request_is_400_naming_the_parameter(http, patch: dict, param: str | None) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 1, **patch}
    error = assert_openai_error(http.post("/v1/responses", json=body), 400)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error


# --- function calling ------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
NAMED = {"type": "function", "name": "get_weather"}


def test_forced_function_call_and_its_result(openai_client, engine) -> None:
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = openai_client.responses.create(
        model=MODEL, input=question, tools=[WEATHER], tool_choice=NAMED, max_output_tokens=48, temperature=0
    )
    assert r.status == "completed"
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id == "fc_" + call.call_id.removeprefix("call_")
    assert json.loads(call.arguments)["city"] in ("Paris", "Tokyo")
    assert r.tools[0].name == "get_weather" and r.tool_choice.name == "get_weather"

    # The client runs the function and sends the result back, replaying the call.
    follow_up = [*question, *r.output, {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}]
    answer = openai_client.responses.create(
        model=MODEL, input=follow_up, tools=[WEATHER], max_output_tokens=3, temperature=0
    )
    spec = ToolSpec(WEATHER["name"], WEATHER["description"], WEATHER["parameters"], strict=True)
    expected = [
        ChatMessage.text("system", render_tool_instructions([spec], "auto")),
        ChatMessage.text("user", "What's the weather in Paris?"),
        assistant_message([], [ToolCall(id=call.call_id, name="get_weather", arguments=json.loads(call.arguments))]),
        ChatMessage.text("tool", "Sunny"),
    ]
    assert answer.usage.input_tokens == prompt_len(engine, expected)


def test_streamed_function_call(openai_client) -> None:
    with openai_client.responses.stream(
        model=MODEL,
        input="What's the weather in Tokyo?",
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # one call, then the grammar ends the answer
        max_output_tokens=48,
        temperature=0,
        store=False,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[2].item.type == "function_call" and events[2].item.arguments == ""
    [call] = final.output
    assert call.type == "function_call" and call.arguments == events[4].arguments
    # A strict tool's arguments are parsed by the SDK's helper.
    assert call.parsed_arguments == json.loads(call.arguments)


def test_structured_output_with_the_parse_helper(openai_client) -> None:
    from pydantic import BaseModel

    class Verdict(BaseModel):
        answer: Literal["yes", "no"]

    r = openai_client.responses.parse(
        model=MODEL, input="Is the sea salty?", text_format=Verdict, max_output_tokens=24, temperature=0, store=False
    )
    assert r.status == "completed"
    assert r.output_parsed.answer in ("yes", "no")
    assert r.text.format.type == "json_schema" and r.text.format.name == "Verdict"


def test_generation_failure_is_500_or_response_failed(engine) -> None:
    from gemma_local.server import create_app

    server = LiveServer(create_app(FailingEngine(engine.info), server_settings()))
    try:
        body = {"model": MODEL, "input": "Hi", "max_output_tokens": 5, "store": False}
        r = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=30)
        error = assert_openai_error(r, 500)
        assert error["type"] == "server_error" and "KV cache" in error["message"]
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
        )
        events = list(client.responses.create(model=MODEL, input="Hi", max_output_tokens=5, stream=True))
    finally:
        server.stop()
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert failed.error.message == "Generation failed: no room left in the KV cache."
    assert failed.id == events[0].response.id


def test_a_failing_store_loses_the_record_not_the_answer(engine, tmp_path, force_hello, caplog) -> None:
    """The database cannot take the response (here: the file is not SQLite at all); the client
    still gets the whole answer, whole or streamed, saying ``store: false``."""
    from gemma_local.server import create_app

    db = tmp_path / "responses.db"
    db.write_bytes(b"this is not a database\n" * 100)
    server = LiveServer(create_app(engine, server_settings(responses_db=db)))
    forced = {"logit_bias": force_hello}
    try:
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
        )
        whole = client.responses.create(model=MODEL, input=PROMPT, max_output_tokens=3, extra_body=forced)
        events = list(
            client.responses.create(model=MODEL, input=PROMPT, max_output_tokens=3, extra_body=forced, stream=True)
        )
    finally:
        server.stop()
    assert (whole.status, whole.output_text, whole.store) == ("incomplete", "HelloHelloHello", False)
    assert events[-1].type == "response.incomplete"
    streamed = events[-1].response
    assert (streamed.output_text, streamed.store) == ("HelloHelloHello", False)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "HelloHelloHello"
    assert caplog.text.count("could not store response") == 2
