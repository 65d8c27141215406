"""One pipeline, three APIs: the same request through Chat Completions, Responses and Messages.

Greedy decoding makes the real 270M model deterministic, so the same conversation must give
the same text, the same prompt token count and the same finish through every API, whole or
streamed; and a feature of the common path (images, the search hook, function calling)
behaves the same through each.
"""

from __future__ import annotations

import base64
import io
import json

import anthropic
import openai
import pytest
from conftest import local_search_server

MODEL = "gemma-3-27b"
SYSTEM = "You are a poet."
QUESTION = "Write a short poem about the sea."
MAX = 12


def ask_all(
    openai_client, anthropic_client, *, user_content=QUESTION, max_tokens=MAX, **extra
) -> dict[str, tuple[str, int, str]]:
    """(text, prompt tokens, finish) from each API for one greedy request."""
    chat = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_content}],
        max_tokens=max_tokens,
        temperature=0,
        extra_body=extra,
    )
    response_content = user_content
    if isinstance(user_content, list):  # Chat parts → Responses parts
        response_content = [
            {"type": "input_text", "text": p["text"]}
            if p["type"] == "text"
            else {"type": "input_image", "image_url": p["image_url"]["url"]}
            for p in user_content
        ]
    response = openai_client.responses.create(
        model=MODEL,
        instructions=SYSTEM,
        input=[{"role": "user", "content": response_content}],
        max_output_tokens=max_tokens,
        temperature=0,
        store=False,
        extra_body=extra,
    )
    message_content = user_content
    if isinstance(user_content, list):  # Chat parts → Anthropic blocks
        message_content = [
            {"type": "text", "text": p["text"]}
            if p["type"] == "text"
            else {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": p["image_url"]["url"].split(",", 1)[1],
                },
            }
            for p in user_content
        ]
    message = anthropic_client.messages.create(
        model=MODEL,
        system=SYSTEM,
        messages=[{"role": "user", "content": message_content}],
        max_tokens=max_tokens,
        extra_body={"temperature": 0, **extra},
    )
    finish = {"length": "max", "stop": "stop"}
    return {
        "chat": (chat.choices[0].message.content, chat.usage.prompt_tokens, finish[chat.choices[0].finish_reason]),
        "responses": (
            response.output_text,
            response.usage.input_tokens,
            "max" if response.status == "incomplete" else "stop",
        ),
        "messages": (
            "".join(b.text for b in message.content if b.type == "text"),
            message.usage.input_tokens + message.usage.cache_read_input_tokens,
            "max" if message.stop_reason == "max_tokens" else "stop",
        ),
    }


def test_same_text_tokens_and_finish(openai_client, anthropic_client) -> None:
    answers = ask_all(openai_client, anthropic_client)
    assert answers["chat"][0], "the model wrote nothing"
    assert answers["responses"] == answers["chat"]
    assert answers["messages"] == answers["chat"]


def test_same_text_streamed(openai_client, anthropic_client) -> None:
    chat = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=MAX,
        temperature=0,
        stream=True,
    )
    chat_text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    with openai_client.responses.stream(
        model=MODEL, instructions=SYSTEM, input=QUESTION, max_output_tokens=MAX, temperature=0, store=False
    ) as stream:
        response_text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    with anthropic_client.messages.stream(
        model=MODEL,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=MAX,
        extra_body={"temperature": 0},
    ) as stream:
        message_text = "".join(stream.text_stream)
    whole = ask_all(openai_client, anthropic_client)["chat"][0]
    assert chat_text == response_text == message_text == whole


def test_same_image_prompt(openai_client, anthropic_client, engine) -> None:
    from PIL import Image

    assert engine.info.vision  # the session engine has the tiny test projector
    buf = io.BytesIO()
    Image.new("RGB", (40, 24), (10, 200, 90)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    answers = ask_all(openai_client, anthropic_client, user_content=content)
    assert answers["responses"] == answers["chat"] and answers["messages"] == answers["chat"]
    text_only = ask_all(openai_client, anthropic_client, user_content="What is this?")
    assert answers["chat"][1] > text_only["chat"][1]  # the image's tokens are in all three prompts


HARBOR = "# Zephyrine harbor\n\nThe zephyrine harbor was painted cobalt blue in 1911.\n"


@pytest.fixture(scope="module")
def search_server(engine, tmp_path_factory: pytest.TempPathFactory):
    server = local_search_server(engine, tmp_path_factory, {"harbor.md": HARBOR})
    yield server
    server.stop()


def test_search_hook_in_every_api(search_server) -> None:
    sdk = openai.OpenAI(
        base_url=f"{search_server.base_url}/v1", api_key="x", _strict_response_validation=True, max_retries=0
    )
    claude = anthropic.Anthropic(
        base_url=search_server.base_url, api_key="x", _strict_response_validation=True, max_retries=0
    )
    answers = ask_all(sdk, claude, user_content="What colour is the zephyrine harbor?", web_search_linkup=True)
    footer = f"\n\nSources:\n[1] Zephyrine harbor — {search_server.docs / 'harbor.md'}"
    assert answers["chat"][0].endswith(footer)
    assert answers["responses"] == answers["chat"] and answers["messages"] == answers["chat"]


CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_same_forced_call_through_every_api(openai_client, anthropic_client, stream: bool) -> None:
    question = "What's the weather in Tokyo?"
    common = {"model": MODEL, "temperature": 0, "stream": stream}
    chat = openai_client.chat.completions.create(
        **common,
        messages=[{"role": "user", "content": question}],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": CITY_SCHEMA}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=48,
    )
    response = openai_client.responses.create(
        **common,
        input=question,
        tools=[{"type": "function", "name": "get_weather", "parameters": CITY_SCHEMA, "strict": False}],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
        store=False,
    )
    message = anthropic_client.messages.create(
        model=MODEL,
        stream=stream,
        max_tokens=48,
        messages=[{"role": "user", "content": question}],
        tools=[{"name": "get_weather", "input_schema": CITY_SCHEMA}],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 0},
    )
    if stream:
        arguments = {
            "chat": "".join(
                tc.function.arguments or ""
                for chunk in chat
                if chunk.choices
                for tc in chunk.choices[0].delta.tool_calls or []
            ),
            "responses": "".join(e.delta for e in response if e.type == "response.function_call_arguments.delta"),
            "messages": "".join(
                e.delta.partial_json
                for e in message
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
            ),
        }
    else:
        [chat_call] = chat.choices[0].message.tool_calls
        [call] = response.output
        [use] = message.content
        assert chat.choices[0].finish_reason == "tool_calls" and message.stop_reason == "tool_use"
        assert response.status == "completed"
        assert chat.usage.prompt_tokens == response.usage.input_tokens
        assert response.usage.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens
        arguments = {
            "chat": chat_call.function.arguments,
            "responses": call.arguments,
            "messages": json.dumps(use.input),
        }
    assert json.loads(arguments["chat"])["city"] in ("Paris", "Tokyo")
    assert arguments["responses"] == arguments["chat"]
    assert json.loads(arguments["messages"]) == json.loads(arguments["chat"])


def test_same_structured_output_through_every_api(openai_client, anthropic_client) -> None:
    schema = {
        "type": "object",
        "properties": {"mood": {"enum": ["calm", "stormy"]}},
        "required": ["mood"],
        "additionalProperties": False,
    }
    answers = ask_all(
        openai_client,
        anthropic_client,
        user_content="How is the sea today? Answer in JSON.",
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "sea", "schema": schema, "strict": True}},
        text={"format": {"type": "json_schema", "name": "sea", "schema": schema, "strict": True}},
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    text, _, finish = answers["chat"]
    assert finish == "stop", answers
    assert json.loads(text)["mood"] in ("calm", "stormy")
    assert answers["responses"] == answers["chat"] and answers["messages"] == answers["chat"]


def test_unsupported_schema_is_400_naming_keyword_and_parameter(http) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 5}}}
    requests = {
        "/v1/chat/completions": (
            {
                "messages": [{"role": "user", "content": "Hi"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
            },
            "response_format.json_schema.schema",
        ),
        "/v1/responses": (
            {"input": "Hi", "text": {"format": {"type": "json_schema", "name": "n", "schema": schema}}},
            "text.format.schema",
        ),
        "/v1/messages": (
            {
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "Hi"}],
                "output_config": {"format": {"type": "json_schema", "schema": schema}},
            },
            "output_config.format.schema",
        ),
    }
    for path, (body, param) in requests.items():
        r = http.post(path, json={"model": MODEL, **body})
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and "'multipleOf'" in error["message"], (path, error)
        if path != "/v1/messages":  # Anthropic's error object has no param
            assert error["param"] == param and error["code"] == "unsupported_schema"

    # A function's schema is enforced, so checked, when a call is forced; with auto it is only shown.
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "tools": [tool], "max_tokens": 1}
    error = http.post("/v1/chat/completions", json={**body, "tool_choice": "required"}).json()["error"]
    assert error["code"] == "unsupported_schema" and error["param"] == "tools", error
    assert http.post("/v1/chat/completions", json={**body, "tool_choice": "auto"}).status_code == 200
