"""Gemma 3's chat format, owned in code rather than taken from a GGUF's Jinja template.

    <bos><start_of_turn>user
    {system}\n\n{user text}<end_of_turn>
    <start_of_turn>model
    {model text}<end_of_turn>
    <start_of_turn>model

The renderer produces *segments*: control tokens are kept apart from user text so that text
is tokenized with special-token parsing off. A user who types ``<start_of_turn>`` gets those
characters, not a forged turn marker.

Rendering is **append-only**, so that a client's next request reuses the KV cache of its
last one: the prompt of a conversation's first k messages, up to where the generation
prompt (``<end_of_turn>\n<start_of_turn>model\n``) starts, is a prefix of the prompt of
its first k+1 messages. Hence the rules:

- Gemma has no system role, so ``system`` and ``developer`` messages, like ``user`` messages
  and tool results, are *user-side*: each message's text lands where the message stands, and
  consecutive user-side messages share one user turn. The common ``[system, user, ...]``
  therefore gives Gemma's own ``{system}\n\n{user}``, while a system message sent after a
  user message stays after it (folding it into the *next* user turn, as Gemma's template
  does, would move it as soon as that turn arrives).
- Within a turn, texts are stripped and joined with a blank line (``\n\n``), whether they
  come from one message's parts or from consecutive messages: a message's text parts render
  exactly like the same text sent as one string joined with ``\n\n`` (the Anthropic API's
  ``system`` blocks are joined the same way). Images stand between texts with no separator.

At the token level the same holds, because every message boundary either falls on a control
token or starts with the ``\n\n`` that Gemma's tokenizer never merges with the text before
it (``tests/test_chat_format_properties.py`` checks both on generated conversations).
"""

from __future__ import annotations

from dataclasses import dataclass

from gemma_local.engine.tools import render_tool_calls
from gemma_local.engine.types import ChatMessage, ImagePart, TextPart
from gemma_local.errors import ChatFormatError

BOS = "<bos>"
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


@dataclass(frozen=True)
class Special:
    """A control token, written by the renderer only."""

    text: str


Segment = str | Special | ImagePart


@dataclass(frozen=True)
class RenderedPrompt:
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The prompt as one string (for display and debugging; images shown as markers)."""
        out = []
        for seg in self.segments:
            if isinstance(seg, Special):
                out.append(seg.text)
            elif isinstance(seg, ImagePart):
                out.append("<start_of_image>")
            else:
                out.append(seg)
        return "".join(out)

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(s for s in self.segments if isinstance(s, ImagePart))


@dataclass
class _Turn:
    role: str  # "user" or "model"
    parts: list[TextPart | ImagePart]


def _gemma_role(role: str) -> str:
    if role in ("system", "developer", "user", "tool"):
        return "user"
    if role == "assistant":
        return "model"
    raise ChatFormatError(f"Unknown message role {role!r}; use system, developer, user, assistant or tool.")


def _text(parts: tuple[TextPart | ImagePart, ...]) -> str:
    """A message's text: its parts stripped and joined as ``_turn_segments`` joins them."""
    return "\n\n".join(t for t in (p.text.strip() for p in parts if isinstance(p, TextPart)) if t)


def _message_parts(message: ChatMessage) -> list[TextPart | ImagePart]:
    if message.role == "tool":
        # Google's examples return tool results to the model as a fenced tool_output block.
        parts: list[TextPart | ImagePart] = [TextPart(f"```tool_output\n{_text(message.content)}\n```")]
        parts.extend(p for p in message.content if isinstance(p, ImagePart))
        return parts
    parts = list(message.content)
    if message.tool_calls:
        # A replayed assistant turn shows the model its own calls, in the format it writes them.
        parts.append(TextPart(render_tool_calls(message.tool_calls)))
    return parts


def _merge_turns(messages: tuple[ChatMessage, ...]) -> list[_Turn]:
    # Every message's parts land where it stands; only a change of side opens a new turn.
    turns: list[_Turn] = []
    for message in messages:
        role = _gemma_role(message.role)
        parts = _message_parts(message)
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(_Turn(role, parts))
    return turns


def _turn_segments(parts: list[TextPart | ImagePart]) -> list[Segment]:
    segments: list[Segment] = []
    texts: list[str] = []
    for part in parts:
        if isinstance(part, ImagePart):
            if texts:
                segments.append("\n\n".join(texts))
                texts = []
            segments.append(part)
        else:
            text = part.text.strip()
            if text:
                texts.append(text)
    if texts:
        segments.append("\n\n".join(texts))
    return segments


def render(messages: tuple[ChatMessage, ...] | list[ChatMessage], *, continue_final: bool = False) -> RenderedPrompt:
    """Render a conversation into Gemma 3's format, ready for the model's answer.

    Args:
        messages: the conversation; system, developer and tool messages are user-side,
            ``assistant`` becomes ``model``, consecutive messages of one side share a turn
            (see the module docstring for why, and how texts are joined).
        continue_final: when the conversation ends with an assistant turn, leave that turn
            open so the model continues it (prefill) instead of raising.

    Raises:
        ChatFormatError: the conversation is empty, or ends with an assistant turn while
            ``continue_final`` is false.
    """
    turns = _merge_turns(tuple(messages))
    if not turns:
        raise ChatFormatError("The conversation is empty: send at least one user message.")
    if turns[-1].role == "model" and not continue_final:
        raise ChatFormatError(
            "The conversation ends with an assistant message; the last message must come from the user."
        )
    segments: list[Segment] = [Special(BOS)]
    for i, turn in enumerate(turns):
        segments += [Special(START_OF_TURN), f"{turn.role}\n", *_turn_segments(turn.parts)]
        is_open_prefill = i == len(turns) - 1 and turn.role == "model"
        if not is_open_prefill:
            segments += [Special(END_OF_TURN), "\n"]
    if turns[-1].role != "model":
        segments += [Special(START_OF_TURN), "model\n"]
    return RenderedPrompt(tuple(_coalesce(segments)))


def render_raw(prompt: str) -> RenderedPrompt:
    """A caller-formatted prompt: BOS, then the text with Gemma's control tokens honoured."""
    return RenderedPrompt((Special(BOS), Special(prompt)))


def _coalesce(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for seg in segments:
        if isinstance(seg, str) and out and isinstance(out[-1], str):
            out[-1] = out[-1] + seg
        elif not (isinstance(seg, str) and seg == ""):
            out.append(seg)
    return out
