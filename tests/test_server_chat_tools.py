"""Structured outputs and function calling on /v1/chat/completions, via the official OpenAI SDK.

The real 270M model and a real server: JSON answers are valid against their schema because
decoding is constrained by a grammar, forced calls are well-formed for the same reason, and
the SDK's own helpers (``.parse()``, ``.stream()``) accept what the server sends.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import openai
import pytest
from pydantic import BaseModel
from test_json_schema import TABLE

from gemma_local.engine import ChatMessage, GenerationRequest
from gemma_local.engine.json_schema import validate_instance
from gemma_local.engine.tools import ToolSpec, render_tool_instructions
from gemma_local.engine.types import ToolCall
from gemma_local.pipeline.conversation import assistant_message

MODEL = "gemma-3-27b"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": CITY, "strict": True},
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now."}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]


def prompt_len(engine, messages: list[ChatMessage]) -> int:
    return len(engine.prompt_tokens(GenerationRequest(messages=tuple(messages))))


def sse_payloads(response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# --- structured outputs ----------------------------------------------------------------------------


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: int


def test_parse_helper_with_a_pydantic_model(openai_client) -> None:
    r = openai_client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sea salty?"}],
        response_format=Verdict,
        max_tokens=40,
        temperature=0,
    )
    [choice] = r.choices
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Verdict)
    assert choice.message.parsed == Verdict.model_validate_json(choice.message.content)


def test_parse_helper_raises_on_a_cut_answer(openai_client) -> None:
    # Cut short by max_tokens: finish_reason "length", which the SDK's helper turns into its error.
    with pytest.raises(openai.LengthFinishReasonError):
        openai_client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Is the sea salty?"}],
            response_format=Verdict,
            max_tokens=3,
            temperature=0,
        )


def test_stream_helper_with_a_pydantic_model(openai_client) -> None:
    with openai_client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sky green?"}],
        response_format=Verdict,
        max_tokens=40,
        temperature=0,
    ) as stream:
        kinds = {event.type for event in stream}
        final = stream.get_final_completion()
    assert {"content.delta", "content.done"} <= kinds
    assert isinstance(final.choices[0].message.parsed, Verdict)


def test_json_object_mode(openai_client) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
        extra_body={"repeat_penalty": 1.3},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_twenty_schemas_give_schema_valid_json(openai_client) -> None:
    assert len(TABLE) == 20

    def ask(name: str, prompt: str, schema: dict) -> tuple[str, str | None, str]:
        r = openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"{prompt} Answer in JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": name.replace("-", "_"),
                    "schema": schema,
                    "strict": name.startswith("pydantic"),
                },
            },
            max_tokens=200,
            temperature=0,
            # The 270M base model otherwise loops inside unbounded arrays and maps.
            extra_body={"repeat_penalty": 1.3},
        )
        return name, r.choices[0].message.content, r.choices[0].finish_reason

    # Eight at a time: the test server's slots plus its queue.
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda row: ask(*row), TABLE))
    failures = []
    for (name, text, finish), (_, _, schema) in zip(answers, TABLE, strict=True):
        if finish != "stop":
            failures.append(f"{name}: finished with {finish}: {text!r}")
        elif errors := validate_instance(schema, json.loads(text)):
            failures.append(f"{name}: {text!r} {errors}")
    assert failures == []


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"not": {}}}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, None),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "tools"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "not": {}}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
        ({"functions": [{"name": "f"}]}, None),
        (
            {
                "messages": [
                    *QUESTION,
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    },
                ]
            },
            "messages[1].tool_calls[0]",
        ),
        ({"messages": [*QUESTION, {"role": "tool", "content": "Sunny"}]}, "messages"),
    ],
)
def test_bad_tools_and_formats_are_400_naming_the_parameter(http, patch: dict, param: str | None) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1, **patch}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param), error


def test_unsupported_schema_names_the_keyword(http) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 5}}}
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    }
    error = http.post("/v1/chat/completions", json=body).json()["error"]
    assert error["code"] == "unsupported_schema" and "'multipleOf'" in error["message"]
    assert error["param"] == "response_format.json_schema.schema"


# --- function calling ----------------------------------------------------------------------------


def test_named_call_and_its_result_round_trip(openai_client, engine) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice=NAMED, max_tokens=48, temperature=0
    )
    [choice] = r.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.id.startswith("call_") and len(call.id) > len("call_")
    arguments = json.loads(call.function.arguments)
    assert validate_instance(CITY, arguments) == []

    # The client runs the function and sends its result back after the replayed call.
    history = [*QUESTION, choice.message.model_dump(exclude_none=True)]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 °C"})
    answer = openai_client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], max_tokens=8, temperature=0
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    spec = ToolSpec("get_weather", "The weather in a city.", CITY, strict=True)
    expected = [
        ChatMessage.text("system", render_tool_instructions([spec], "auto")),
        ChatMessage.text("user", "What's the weather in Paris?"),
        assistant_message([], [ToolCall(id=call.id, name="get_weather", arguments=arguments)]),
        ChatMessage.text("tool", "Sunny, 24 °C"),
    ]
    assert answer.usage.prompt_tokens == prompt_len(engine, expected)
    # The replayed call is the one the model wrote: its text is already in the prefix cache.
    assert answer.usage.prompt_tokens_details.cached_tokens > 0


def test_required_calls_streamed_through_the_stream_helper(openai_client) -> None:
    with openai_client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather in Tokyo, and the time?"}],
        tools=[WEATHER, TIME],
        tool_choice="required",
        # The 270M model goes on calling until the grammar's limit of eight calls (~180 tokens).
        max_tokens=256,
        temperature=0,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and all(c.function.name in ("get_weather", "get_time") for c in calls)
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [(e.index, e.name, e.arguments) for e in done] == [
        (i, c.function.name, c.function.arguments) for i, c in enumerate(calls)
    ]
    assert not [e for e in events if e.type == "content.delta" and e.delta]
    for call in calls:
        if call.function.name == "get_weather":
            # A strict tool's arguments are parsed by the SDK's helper.
            assert call.function.parsed_arguments == json.loads(call.function.arguments)
        else:
            assert json.loads(call.function.arguments) == {}


def test_streamed_tool_call_deltas_have_openais_shape(http) -> None:
    body = {
        "model": MODEL,
        "messages": QUESTION,
        "tools": [WEATHER],
        "tool_choice": NAMED,
        "n": 2,
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }
    chunks = sse_payloads(http.post("/v1/chat/completions", json=body))
    for index in (0, 1):
        deltas = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        pieces = [d["delta"]["tool_calls"] for d in deltas if "tool_calls" in d["delta"]]
        assert all(len(p) == 1 and p[0]["index"] == 0 for p in pieces)
        head, *rest = [p[0] for p in pieces]
        # Id, type and name once, in the first piece; later pieces carry only more arguments.
        assert head["id"].startswith("call_") and head["type"] == "function"
        assert head["function"] == {"name": "get_weather", "arguments": ""}
        assert rest and all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in rest)
        assert validate_instance(CITY, json.loads("".join(p["function"]["arguments"] for p in rest))) == []
        assert not any(d["delta"].get("content") for d in deltas)
        assert deltas[-1]["finish_reason"] == "tool_calls"


def test_one_call_when_parallel_calls_are_off(openai_client) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=96,
        temperature=0,
    )
    assert len(r.choices[0].message.tool_calls) == 1
    assert r.choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_does_not_offer_the_tools(openai_client, engine) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="none", max_tokens=4, temperature=0
    )
    assert r.choices[0].message.tool_calls is None
    assert r.usage.prompt_tokens == prompt_len(engine, [ChatMessage.text("user", QUESTION[0]["content"])])


def test_auto_offers_the_tools_in_the_system_turn(openai_client, engine) -> None:
    r = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, *QUESTION],
        tools=[WEATHER],
        max_tokens=4,
        temperature=0,
    )
    spec = ToolSpec("get_weather", "The weather in a city.", CITY, strict=True)
    expected = [
        ChatMessage.text("system", render_tool_instructions([spec], "auto")),
        ChatMessage.text("system", "Be brief."),
        ChatMessage.text("user", QUESTION[0]["content"]),
    ]
    assert r.usage.prompt_tokens == prompt_len(engine, expected)
