"""Properties of the chat format over generated conversations (hypothesis).

Append-only rendering is what lets a client's next request reuse the KV cache of its last
one: the prompt of a conversation's first k messages, without its generation prompt, is a
prefix of the prompt of any longer prefix of it, as segments and as the real model's
tokens. And a message's text parts render exactly like the same text sent as one string.
"""

from __future__ import annotations

import hashlib
import io
import json
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gemma_local.engine import ChatMessage, GenerationRequest, ImagePart, TextPart
from gemma_local.engine.chat_format import END_OF_TURN, START_OF_TURN, RenderedPrompt, Special, render
from gemma_local.engine.types import ToolCall

GENERATION_PROMPT = (Special(END_OF_TURN), "\n", Special(START_OF_TURN), "model\n")

# Pieces chosen to stress the joins: whitespace at the edges, markup a user may type, fences,
# text that looks like a call, characters outside ASCII.
PIECES = [
    "a", "Hi", "the", " ", "  ", "\n", "\n\n", "\t", ".", ",", "!", "?", ")", "`", "```", "{", '"', ":",
    "tool_call", "tool_output", "<start_of_turn>", "<end_of_turn>", "model", "user", "<start_of_image>",
    "é", "中文", "🙂", "\u00a0", "x\u200b", "1234", "_", "#",
]  # fmt: skip
texts = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


def _image(color: tuple[int, int, int]) -> ImagePart:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return ImagePart(data=buf.getvalue(), digest=hashlib.sha256(buf.getvalue()).hexdigest())


IMAGES = [_image((200, 10, 10)), _image((10, 200, 10))]

tool_calls = st.builds(
    ToolCall,
    id=st.sampled_from(["call_" + "a" * 24, "call_" + "b1" * 12]),
    name=st.sampled_from(["add", "get_weather", "shell"]),
    arguments=st.dictionaries(st.sampled_from(["a", "city", "cmd"]), st.integers(-5, 5) | texts, max_size=2),
)


@st.composite
def messages(draw: st.DrawFn, *, images: bool = True) -> ChatMessage:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    part = texts.map(TextPart) | st.sampled_from(IMAGES) if images else texts.map(TextPart)
    parts = tuple(draw(st.lists(part, max_size=3)))
    calls = tuple(draw(st.lists(tool_calls, max_size=2))) if role == "assistant" else ()
    return ChatMessage(role=role, content=parts, tool_calls=calls)


def conversations(*, images: bool = True) -> st.SearchStrategy[list[ChatMessage]]:
    return st.lists(messages(images=images), min_size=1, max_size=8)


def renderable(conversation: list[ChatMessage]) -> list[int]:
    """The prefix lengths a client can send: those ending with a user-side message."""
    return [k for k in range(1, len(conversation) + 1) if conversation[k - 1].role != "assistant"]


def flat(segments: tuple) -> list:
    """Segments as one sequence: text character by character, control tokens and images whole."""
    out: list = []
    for seg in segments:
        out.extend(seg if isinstance(seg, str) else [seg])
    return out


def without_generation_prompt(prompt: RenderedPrompt) -> tuple:
    assert prompt.segments[-len(GENERATION_PROMPT) :] == GENERATION_PROMPT
    return prompt.segments[: -len(GENERATION_PROMPT)]


@settings(max_examples=400, deadline=None, database=None)
@given(conversations())
def test_rendering_is_append_only(conversation: list[ChatMessage]) -> None:
    ks = renderable(conversation)
    for k, longer in pairwise(ks):
        before = flat(without_generation_prompt(render(conversation[:k])))
        after = flat(render(conversation[:longer]).segments)
        assert after[: len(before)] == before, (k, longer)


def _as_one_string(message: ChatMessage) -> ChatMessage:
    """The message with each run of text parts sent as one string, joined as the docs say."""
    parts: list[TextPart | ImagePart] = []
    run: list[str] = []
    for part in (*message.content, None):
        if isinstance(part, TextPart):
            run.append(part.text)
            continue
        joined = "\n\n".join(t.strip() for t in run if t.strip())
        if run:
            parts.append(TextPart(joined))
        run = []
        if part is not None:
            parts.append(part)
    return ChatMessage(role=message.role, content=tuple(parts), tool_calls=message.tool_calls)


@settings(max_examples=300, deadline=None, database=None)
@given(conversations())
def test_text_parts_render_like_one_string(conversation: list[ChatMessage]) -> None:
    as_strings = [_as_one_string(m) for m in conversation]
    assert render(as_strings, continue_final=True) == render(conversation, continue_final=True)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(texts.filter(str.strip), min_size=2, max_size=2))
def test_leading_system_keeps_gemmas_own_format(pair: list[str]) -> None:
    system, user = pair
    prompt = render([ChatMessage.text("system", system), ChatMessage.text("user", user)])
    assert prompt.text == (
        f"<bos><start_of_turn>user\n{system.strip()}\n\n{user.strip()}<end_of_turn>\n<start_of_turn>model\n"
    )


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversations())
def test_tokens_are_append_only(engine, conversation: list[ChatMessage]) -> None:
    """The same on the real tokenizer (images as the tiny projector's placeholder tokens):
    a message boundary never lets a token merge across it."""
    generation_prompt = engine.model.tokenize_prompt(RenderedPrompt(GENERATION_PROMPT))
    tokens = {
        k: engine.prompt_tokens(GenerationRequest(messages=tuple(conversation[:k]))) for k in renderable(conversation)
    }
    for k, longer in pairwise(tokens):
        assert tokens[k][-len(generation_prompt) :] == generation_prompt
        before = tokens[k][: -len(generation_prompt)]
        assert tokens[longer][: len(before)] == before, (k, longer)


# --- the same through each API's translator --------------------------------------------------------

TURN_ROLES = ["system", "developer", "user", "assistant", "tool_result"]
ADD_TOOL = {
    "name": "add",
    "description": "Add.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
}


@st.composite
def turns(draw: st.DrawFn) -> tuple[str, str, bool, list[dict]]:
    """A neutral turn: (role, text, as a list of parts?, calls an assistant made)."""
    role = draw(st.sampled_from(TURN_ROLES))
    calls = draw(st.lists(st.fixed_dictionaries({"a": st.integers(-3, 3)}), max_size=2)) if role == "assistant" else []
    return role, draw(texts.filter(str.strip)), draw(st.booleans()), calls


def _chat(conversation) -> dict:
    messages = []
    for i, (role, text, as_list, calls) in enumerate(conversation):
        content = [{"type": "text", "text": text}] if as_list else text
        if role == "tool_result":
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "content": content})
        elif role == "assistant":
            tool_calls = [
                {"id": f"call_{i}_{j}", "type": "function", "function": {"name": "add", "arguments": json.dumps(c)}}
                for j, c in enumerate(calls)
            ]
            messages.append({"role": "assistant", "content": text, **({"tool_calls": tool_calls} if calls else {})})
        else:
            messages.append({"role": role, "content": content})
    return {"model": "m", "messages": messages, "tools": [{"type": "function", "function": ADD_TOOL}]}


def _responses(conversation) -> dict:
    items: list[dict] = []
    for i, (role, text, as_list, calls) in enumerate(conversation):
        if role == "tool_result":
            items.append({"type": "function_call_output", "call_id": f"call_{i}", "output": text})
        elif role == "assistant":
            items.append({"role": "assistant", "content": text})
            items += [
                {"type": "function_call", "call_id": f"call_{i}_{j}", "name": "add", "arguments": json.dumps(c)}
                for j, c in enumerate(calls)
            ]
        else:
            items.append({"role": role, "content": [{"type": "input_text", "text": text}] if as_list else text})
    return {"model": "m", "input": items, "tools": [{"type": "function", **ADD_TOOL}]}


def _messages(conversation) -> dict:
    messages = []
    for i, (role, text, as_list, calls) in enumerate(conversation):
        blocks = [{"type": "text", "text": text}]
        if role == "tool_result":
            messages.append(
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": text}]}
            )
        elif role == "assistant":
            uses = [{"type": "tool_use", "id": f"t{i}_{j}", "name": "add", "input": c} for j, c in enumerate(calls)]
            messages.append({"role": "assistant", "content": blocks + uses})
        else:  # a developer message is a system message to Anthropic's API
            messages.append({"role": "user" if role == "user" else "system", "content": blocks if as_list else text})
    tool = {"name": "add", "description": "Add.", "input_schema": ADD_TOOL["parameters"]}
    return {"model": "m", "max_tokens": 5, "messages": messages, "tools": [tool]}


def _rendered(api: str, conversation) -> tuple:
    from gemma_local.pipeline.tooling import plan_generation
    from gemma_local.server import anthropic_messages, openai_chat, openai_responses
    from gemma_local.server.anthropic_messages_schemas import MessagesRequest
    from gemma_local.server.openai_chat_schemas import ChatCompletionRequest
    from gemma_local.server.openai_responses_schemas import ResponseCreateRequest

    if api == "chat":
        request = openai_chat.to_pipeline_request(ChatCompletionRequest.model_validate(_chat(conversation)))
    elif api == "responses":
        body = ResponseCreateRequest.model_validate(_responses(conversation))
        items = openai_responses.stored_input_items(body.input)
        request = openai_responses.to_pipeline_request(body, items, [f"input[{i}]" for i in range(len(items))])
    else:
        request = anthropic_messages.to_pipeline_request(MessagesRequest.model_validate(_messages(conversation)))
    generation, _ = plan_generation(request.generation, request.tools, request.tool_choice, None)
    return render(generation.messages).segments


@pytest.mark.parametrize("api", ["chat", "responses", "messages"])
@settings(max_examples=150, deadline=None, database=None)
@given(conversation=st.lists(turns(), min_size=1, max_size=7))
def test_every_api_renders_append_only(api: str, conversation) -> None:
    """Through each API's own request shape (list and string content, calls, results, tools)."""
    ks = [k for k in range(1, len(conversation) + 1) if conversation[k - 1][0] != "assistant"]
    for k, longer in pairwise(ks):
        before = flat(without_generation_prompt(RenderedPrompt(_rendered(api, conversation[:k]))))
        after = flat(_rendered(api, conversation[:longer]))
        assert after[: len(before)] == before, (api, k, longer)
