"""Gemma 3's chat format, owned in code rather than taken from a GGUF's Jinja template.

    <bos><start_of_turn>user
    {system}\n\n{user text}<end_of_turn>
    <start_of_turn>model
    {model text}<end_of_turn>
    <start_of_turn>model

The renderer produces *segments*: control tokens are kept apart from user text so that text
is tokenized with special-token parsing off. A user who types ``<start_of_turn>`` gets those
characters, not a forged turn marker.
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
    if role in ("user", "tool"):
        return "user"
    if role == "assistant":
        return "model"
    raise ChatFormatError(f"Unknown message role {role!r}; use system, developer, user, assistant or tool.")


def _tool_output_parts(message: ChatMessage) -> list[TextPart | ImagePart]:
    # Google's examples return tool results to the model as a fenced tool_output block.
    text = message.plain_text.strip()
    parts: list[TextPart | ImagePart] = [TextPart(f"```tool_output\n{text}\n```")]
    parts.extend(p for p in message.content if isinstance(p, ImagePart))
    return parts


def _merge_turns(messages: tuple[ChatMessage, ...]) -> list[_Turn]:
    turns: list[_Turn] = []
    pending_system: list[str] = []
    for message in messages:
        if message.role in ("system", "developer"):
            text = message.plain_text.strip()
            if text:
                pending_system.append(text)
            continue
        role = _gemma_role(message.role)
        parts = _tool_output_parts(message) if message.role == "tool" else list(message.content)
        if message.tool_calls:
            # A replayed assistant turn shows the model its own calls, in the format it writes them.
            parts.append(TextPart(render_tool_calls(message.tool_calls)))
        if role == "user" and pending_system:
            # Gemma has no system role: instructions lead the next user turn.
            parts = [TextPart("\n\n".join(pending_system)), *parts]
            pending_system = []
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(_Turn(role, parts))
    if pending_system:
        # Instructions with no user turn after them still reach the model, as a user turn.
        parts = [TextPart("\n\n".join(pending_system))]
        if turns and turns[-1].role == "user":
            turns[-1].parts.extend(parts)
        else:
            turns.append(_Turn("user", parts))
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
        messages: the conversation; system/developer turns are folded into the next user turn,
            ``assistant`` becomes ``model``, consecutive turns of one role are merged.
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
