"""Properties of the chat format over generated conversations (hypothesis).

Append-only rendering is what lets a client's next request reuse the KV cache of its last
one: the prompt of a conversation's first k messages, without its generation prompt, is a
prefix of the prompt of any longer prefix of it, as segments and as the real model's
tokens. And a message's text parts render exactly like the same text sent as one string.
"""

from __future__ import annotations

import hashlib
import io
from itertools import pairwise

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
