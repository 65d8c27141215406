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
from conftest import LiveServer, server_settings

MODEL = "gemma-3-27b"
SYSTEM = "You are a poet."
QUESTION = "Write a short poem about the sea."
MAX = 12


def ask_all(openai_client, anthropic_client, *, user_content=QUESTION, **extra) -> dict[str, tuple[str, int, str]]:
    """(text, prompt tokens, finish) from each API for one greedy request."""
    chat = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_content}],
        max_tokens=MAX,
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
        max_output_tokens=MAX,
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
        max_tokens=MAX,
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


@pytest.fixture(scope="module")
def search_server(engine, tmp_path_factory: pytest.TempPathFactory):
    from gemma_local.search import ProviderChain
    from gemma_local.search.providers.local_index import LocalIndex, LocalIndexProvider
    from gemma_local.server import create_app

    docs = tmp_path_factory.mktemp("docs")
    (docs / "harbor.md").write_text("# Zephyrine harbor\n\nThe zephyrine harbor was painted cobalt blue in 1911.\n")
    index = LocalIndex(tmp_path_factory.mktemp("index") / "search.db")
    index.add([docs])
    chain = ProviderChain([LocalIndexProvider(index)], timeout_s=10)
    server = LiveServer(create_app(engine, server_settings(), search_chain=chain))
    server.docs = docs
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


def test_same_forced_call_through_responses_and_messages(openai_client, anthropic_client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    question = "What's the weather in Tokyo?"
    response = openai_client.responses.create(
        model=MODEL,
        input=question,
        tools=[{"type": "function", "name": "get_weather", "parameters": schema, "strict": False}],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
        temperature=0,
        store=False,
    )
    message = anthropic_client.messages.create(
        model=MODEL,
        max_tokens=48,
        messages=[{"role": "user", "content": question}],
        tools=[{"name": "get_weather", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 0},
    )
    [call] = response.output
    [use] = message.content
    assert (call.name, call.arguments) == (use.name, json.dumps(use.input))
    assert message.stop_reason == "tool_use" and response.status == "completed"
    assert response.usage.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens
