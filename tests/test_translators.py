"""The three APIs' request translators: pure, synchronous, no engine (fast unit tests).

Each turns its API's request body into the pipeline's common request. Images stay references
(:class:`ImageRef`) that the pipeline loads later, so nothing here fetches or decodes.
"""

from __future__ import annotations

import inspect

import pytest

from gemma_local.engine import SamplingParams, TextPart
from gemma_local.engine.types import ImageRef, ToolCall
from gemma_local.pipeline import NamedToolChoice, OutputFormat
from gemma_local.server import anthropic_messages, openai_chat, openai_responses
from gemma_local.server.anthropic_messages_schemas import CountTokensRequest, MessagesRequest
from gemma_local.server.openai_chat_schemas import ChatCompletionRequest
from gemma_local.server.openai_responses_schemas import ResponseCreateRequest

PNG_URI = "data:image/png;base64,iVBORw0KGgo="
TOOL = {
    "name": "add",
    "description": "Add.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
}


def test_translators_are_synchronous() -> None:
    for module in (openai_chat, openai_responses, anthropic_messages):
        assert not inspect.iscoroutinefunction(module.to_pipeline_request), module.__name__


def test_chat_translation() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "gemma-3-27b",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": PNG_URI}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "1"},
            ],
            "temperature": 0.2,
            "top_k": 3.0,
            "seed": 7,
            "logit_bias": {"42": -100},
            "stop": "a,b",
            "n": 2,
            "max_completion_tokens": 9,
            "tools": [{"type": "function", "function": TOOL}],
            "tool_choice": {"type": "function", "function": {"name": "add"}},
            "parallel_tool_calls": False,
            "response_format": {"type": "json_object"},
        }
    )
    request = openai_chat.to_pipeline_request(body)
    assert request.endpoint == "/v1/chat/completions" and request.request_id.startswith("chatcmpl-")
    messages = request.generation.messages
    assert [m.role for m in messages] == ["developer", "user", "assistant", "tool"]
    assert messages[1].content == (TextPart("What is this?"), ImageRef(url=PNG_URI, param="messages[1].content[1]"))
    assert messages[2].tool_calls == (ToolCall(id="call_1", name="add", arguments={"a": 1}),)
    assert request.generation.sampling == SamplingParams(temperature=0.2, top_k=3, seed=7, logit_bias={42: -100})
    assert request.generation.stop == ("a", "b") and request.stop_param == "stop"
    assert request.generation.max_tokens == 9 and request.n == 2
    assert request.tool_choice == NamedToolChoice("add") and request.parallel_tool_calls is False
    assert request.output_format == OutputFormat(type="json_object")


def test_responses_translation() -> None:
    body = ResponseCreateRequest.model_validate(
        {
            "model": "gemma-3-27b",
            "instructions": "Answer briefly.",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Look"}, {"type": "input_image", "image_url": PNG_URI}],
                },
                {"type": "function_call", "call_id": "call_9", "name": "add", "arguments": '{"a": 2}'},
                {"type": "function_call_output", "call_id": "call_9", "output": "2"},
            ],
            "tools": [{"type": "function", **TOOL, "strict": False}],
            "tool_choice": "required",
            "stop": ["END"],
            "max_output_tokens": 12,
            "top_p": 0.5,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
        }
    )
    items = openai_responses.stored_input_items(body.input)
    request = openai_responses.to_pipeline_request(body, items, [f"input[{i}]" for i in range(len(items))])
    roles = [m.role for m in request.generation.messages]
    assert roles == ["system", "user", "assistant", "tool"]
    assert request.generation.messages[1].content[1] == ImageRef(url=PNG_URI, param="input[0].content[1]")
    assert request.generation.messages[2].tool_calls[0].arguments == {"a": 2}
    assert request.tool_choice == "required" and request.generation.stop == ("END",)
    assert request.generation.sampling.top_p == 0.5 and request.generation.max_tokens == 12
    assert request.output_format is not None and request.output_format.param == "text.format.schema"


def test_messages_translation() -> None:
    body = MessagesRequest.model_validate(
        {
            "model": "gemma-3-27b",
            "max_tokens": 20,
            "system": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                        {"type": "text", "text": "Hi"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 3}}],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3", "is_error": True}],
                },
            ],
            "tools": [{"name": "add", "input_schema": TOOL["parameters"]}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "stop_sequences": ["X", ""],
            "temperature": 0,
        }
    )
    request = anthropic_messages.to_pipeline_request(body)
    messages = request.generation.messages
    assert messages[0].content == (TextPart("One.\n\nTwo."),)
    assert messages[1].content[0] == ImageRef(base64="iVBO", media_type="image/png", param="messages[0].content[0]")
    assert messages[3].role == "tool" and messages[3].content == (TextPart("Error:"), TextPart("3"))
    assert request.tool_choice == "required" and request.parallel_tool_calls is False
    assert request.generation.stop == ("X",) and request.stop_param == "stop_sequences"
    assert request.generation.sampling.temperature == 0 and request.generation.max_tokens == 20


def test_count_tokens_translation_takes_no_sampling() -> None:
    body = CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    request = anthropic_messages.to_pipeline_request(body)
    assert request.generation.sampling == SamplingParams()


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}]}),
        (ResponseCreateRequest, {"input": "x"}),
        (MessagesRequest, {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    ],
)
def test_every_api_takes_the_same_sampling_fields(model, extra) -> None:
    fields = {
        "temperature": 1.5,
        "top_p": 0.9,
        "top_k": 4.0,
        "min_p": 0.1,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "repeat_penalty": 1.1,
        "seed": 3.0,
        "logit_bias": {"7": 5},
    }
    body = model.model_validate({"model": "m", **extra, **fields})
    assert body.to_sampling() == SamplingParams(
        temperature=1.5,
        top_p=0.9,
        top_k=4,
        min_p=0.1,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        repeat_penalty=1.1,
        seed=3,
        logit_bias={7: 5.0},
    )
