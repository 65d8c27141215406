"""Finding tool calls in Gemma's output, whole or while it streams.

:class:`ToolCallStreamFilter` is fed text deltas and returns, in order, content text that is
certainly not part of a call and each :class:`ToolCall` as soon as its block is complete.
Text that might still turn into a call (a backtick that may open a fence, a fence whose
body is still arriving, a ``{`` that opens the answer) is held back until it resolves, so
no partial call ever leaks out as content. :func:`parse_tool_calls` runs the same filter
over a finished answer, so a stream and a whole answer always agree.

What counts as a call is documented in ``gemma_local.engine.tools``. Whitespace next to a
call is dropped (a model puts a newline before its fence); other text is kept as it is.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gemma_local.engine.types import ToolCall

if TYPE_CHECKING:
    from gemma_local.engine.tools import ToolSpec

__all__ = ["ParsedOutput", "StreamItem", "ToolCallStreamFilter", "new_call_id", "parse_tool_calls"]

#: Fence info strings whose body may hold calls. Bodies of ``json`` and untagged fences are
#: calls only when they have exactly the call shape with a known name, like any other.
CALL_TAGS = ("tool_call", "tool_code", "json", "")
_FENCE = "```"
_CALL_KEYS = ("name", "parameters", "arguments")

StreamItem = str | ToolCall
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """A fresh call id, ``call_`` and 24 random letters and digits (as OpenAI's look)."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class ParsedOutput:
    """A finished answer split into content and calls."""

    #: The content without the call blocks ("" when the answer was only calls).
    text: str
    calls: tuple[ToolCall, ...]


class ToolCallStreamFilter:
    """Separates calls from content in a stream of text deltas.

    Args:
        tools: the functions on offer; a call naming another function stays text. None
            accepts any name.
        bare_calls: also accept a call written without a fence at the start of the answer
            (turn off when the answer is expected to be JSON, e.g. with a response format,
            so that JSON content streams without waiting).
        id_factory: makes the ids of parsed calls.
    """

    def __init__(
        self,
        tools: Sequence[ToolSpec] | None = None,
        *,
        bare_calls: bool = True,
        id_factory: Callable[[], str] = new_call_id,
    ) -> None:
        self._names = None if tools is None else {t.name for t in tools}
        self._bare = bare_calls
        self._new_id = id_factory
        self._buf = ""
        #: At the start of the answer or right after a call, with only whitespace since.
        self._boundary = True
        self._had_call = False
        #: Inside a code block that is not a call: its closing fence is plain text.
        self._foreign = False
        self._done = False
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> list[StreamItem]:
        """Take the next piece of output; return what is now certain, in order.

        Returns:
            Content strings and :class:`ToolCall` objects.
        """
        if self._done:
            raise RuntimeError("feed() after finish()")
        self._buf += delta
        return self._drain(final=False)

    def finish(self) -> list[StreamItem]:
        """End of output: resolve everything held back (an unfinished call becomes text)."""
        if self._done:
            return []
        self._done = True
        return self._drain(final=True)

    def take_unfinished_call(self) -> str | None:
        """Remove and return the start of a call the output ended in, if that is what is held back.

        For an answer cut by its token limit: the piece of a call it was writing is reported as
        a truncated call, never as text. What came before the call stays for :meth:`finish`.

        Returns:
            The call's text from its fence (or its opening brace, for a bare call), or None
            when what is held back is not the start of a call.
        """
        if self._done or self._foreign:
            return None
        buf = self._buf
        body = buf.lstrip()
        if self._boundary and self._bare and body[:1] in ("{", "[") and _may_start_call(body):
            self._buf = buf[: len(buf) - len(body)]
            return body
        at = buf.find(_FENCE)
        if at < 0:
            return None
        rest = buf[at:]
        newline = rest.find("\n", len(_FENCE))
        if newline < 0:
            tag = rest[len(_FENCE) :]
            is_call = bool(tag.strip()) and _may_be_call_tag(tag) and "tool_call".startswith(tag.strip())
        else:
            tag = rest[len(_FENCE) : newline].strip()
            inner = rest[newline + 1 :].lstrip()
            is_call = tag == "tool_call" or (tag in CALL_TAGS and bool(inner) and _may_start_call(inner))
        if not is_call:
            return None
        self._buf = buf[:at]
        return rest

    # --- the state machine -----------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[StreamItem]:
        out: list[StreamItem] = []
        while self._buf and self._step(out, final):
            pass
        return _merge_text(out)

    def _text(self, out: list[StreamItem], text: str) -> None:
        if text:
            out.append(text)
            if text.strip():
                self._boundary = False

    def _call(self, out: list[StreamItem], calls: list[ToolCall]) -> None:
        out.extend(calls)
        self.calls.extend(calls)
        self._boundary = True
        self._had_call = True

    def _step(self, out: list[StreamItem], final: bool) -> bool:
        """Resolve what can be resolved at the front of the buffer; False when it must wait."""
        buf = self._buf
        if self._foreign:
            return self._foreign_block(out, final)
        if self._boundary:
            body = buf.lstrip()
            lead = buf[: len(buf) - len(body)]
            if not body:
                if final:
                    # Whitespace after a call is noise; an answer of only whitespace is kept.
                    self._text(out, "" if self._had_call else buf)
                    self._buf = ""
                return False
            if self._bare and body[0] in "{[":
                return self._bare_call(out, lead, body, final)
            if not body.startswith("`"):
                self._text(out, lead)
                self._buf = body
                self._boundary = False
                return True
        return self._fenced(out, final)

    def _bare_call(self, out: list[StreamItem], lead: str, body: str, final: bool) -> bool:
        end = _json_end(body)
        if end is None:
            if not final and _may_start_call(body):
                return False
            # Not a call after all (or cut short): text, which may still hold a fenced call.
            self._text(out, lead + body[0])
            self._buf = body[1:]
            self._boundary = False
            return True
        calls = self._calls_in(body[:end])
        if calls is None:
            self._text(out, lead + body[:end])
            self._boundary = False
        else:
            self._call(out, calls)
        self._buf = body[end:]
        return True

    def _fenced(self, out: list[StreamItem], final: bool) -> bool:
        buf = self._buf
        at = buf.find(_FENCE)
        if at < 0:
            if final:
                self._text(out, buf)
                self._buf = ""
                return False
            # Hold a trailing run of backticks (it may become a fence) and the whitespace
            # before it (dropped if a call follows).
            keep = len(buf) - len(buf.rstrip("`"))
            keep = min(keep, len(_FENCE) - 1)
            head = buf[: len(buf) - keep]
            stripped = head.rstrip()
            self._text(out, stripped)
            self._buf = buf[len(stripped) :]
            return False
        before = buf[:at]
        text = before.rstrip()
        gap = before[len(text) :]
        self._text(out, text)
        rest = buf[at:]
        newline = rest.find("\n", len(_FENCE))
        if newline < 0:
            tag = rest[len(_FENCE) :]
            if not final and _may_be_call_tag(tag):
                self._buf = gap + rest
                return False
            self._text(out, gap + _FENCE)
            self._buf = rest[len(_FENCE) :]
            self._foreign = True
            return True
        tag = rest[len(_FENCE) : newline].strip()
        if tag not in CALL_TAGS:
            self._text(out, gap + rest[: newline + 1])
            self._buf = rest[newline + 1 :]
            self._foreign = True
            return True
        close = rest.find(_FENCE, newline + 1)
        if close < 0:
            if final:
                self._text(out, gap + rest)
                self._buf = ""
                return False
            self._buf = gap + rest
            return False
        calls = self._calls_in(rest[newline + 1 : close])
        if calls is None:
            self._text(out, gap + rest[: close + len(_FENCE)])
        else:
            self._call(out, calls)
        self._buf = rest[close + len(_FENCE) :]
        return True

    def _foreign_block(self, out: list[StreamItem], final: bool) -> bool:
        buf = self._buf
        at = buf.find(_FENCE)
        if at < 0:
            keep = 0 if final else min(len(buf) - len(buf.rstrip("`")), len(_FENCE) - 1)
            self._text(out, buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return False
        self._text(out, buf[: at + len(_FENCE)])
        self._buf = buf[at + len(_FENCE) :]
        self._foreign = False
        return True

    def _calls_in(self, text: str) -> list[ToolCall] | None:
        """The calls in a block body, or None when it is not entirely calls."""
        values = _json_values(text)
        if not values:
            return None
        items: list[Any] = []
        for value in values:
            items.extend(value if isinstance(value, list) else [value])
        calls = []
        for item in items:
            call = self._call_from(item)
            if call is None:
                return None
            calls.append(call)
        return calls or None

    def _call_from(self, item: Any) -> ToolCall | None:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not set(item) <= set(_CALL_KEYS):
            return None
        if "parameters" in item and "arguments" in item:
            return None
        if self._names is not None and item["name"] not in self._names:
            return None
        args = item.get("parameters", item.get("arguments", {}))
        if isinstance(args, str):  # OpenAI-style arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCall(id=self._new_id(), name=item["name"], arguments=args)


def parse_tool_calls(text: str, tools: Sequence[ToolSpec] | None = None) -> ParsedOutput:
    """Split a finished answer into content and calls (same rules as the stream filter).

    Args:
        text: the model's whole answer.
        tools: the functions on offer (None: accept any name).

    Returns:
        The content without call blocks, and the calls in order.
    """
    f = ToolCallStreamFilter(tools)
    items = [*f.feed(text), *f.finish()]
    return ParsedOutput(
        text="".join(i for i in items if isinstance(i, str)),
        calls=tuple(i for i in items if isinstance(i, ToolCall)),
    )


# --- helpers ----------------------------------------------------------------------------------


def _merge_text(items: list[StreamItem]) -> list[StreamItem]:
    out: list[StreamItem] = []
    for item in items:
        if isinstance(item, str) and out and isinstance(out[-1], str):
            out[-1] += item
        elif item != "":
            out.append(item)
    return out


def _json_end(text: str) -> int | None:
    """Index just past the JSON object/array that opens ``text``, or None if it is unfinished."""
    depth = 0
    in_string = False
    escaped = False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _json_values(text: str) -> list[Any] | None:
    """All JSON values in ``text`` separated by whitespace, or None if anything else is there."""
    decoder = json.JSONDecoder()
    values = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return None
        values.append(value)


def _may_start_call(text: str) -> bool:
    """Whether an unfinished bare JSON answer can still become a call (cheap prefix check)."""
    rest = text.lstrip()
    if rest.startswith("["):
        rest = rest[1:].lstrip()
        if not rest:
            return True
    if not rest.startswith("{"):
        return False
    rest = rest[1:].lstrip()
    if not rest:
        return True
    if not rest.startswith('"'):
        return False
    key, quote, _ = rest[1:].partition('"')
    if not quote:
        return any(k.startswith(key) for k in _CALL_KEYS)
    return key in _CALL_KEYS


def _may_be_call_tag(tag: str) -> bool:
    """Whether an unfinished fence info string can still be one of :data:`CALL_TAGS`."""
    if "`" in tag:
        return False
    if tag != tag.rstrip():
        return tag.strip() in CALL_TAGS
    tag = tag.lstrip()
    return any(t.startswith(tag) for t in CALL_TAGS)
