"""Helpers every request translation shares: ids, sampling options, stop sequences, tools and
replayed assistant turns."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from gemma_local.engine import ChatMessage, SamplingParams
from gemma_local.engine.tools import NamedToolChoice, ToolSpec
from gemma_local.engine.types import ContentPart, ToolCall
from gemma_local.errors import ChatFormatError, InvalidRequestError


def new_id(prefix: str) -> str:
    """A fresh object id such as ``resp_…``, ``msg_…``, ``call_…`` (32 hex digits)."""
    return f"{prefix}{uuid.uuid4().hex}"


def sampling_params(*, logit_bias: dict[str, float] | None = None, **options: Any) -> SamplingParams:
    """Sampling options a request set; unset (None) ones keep the hosted API's defaults.

    ``logit_bias`` comes as the APIs send it: token ids as strings (validated by the schemas).
    """
    if logit_bias:
        options["logit_bias"] = {int(token): bias for token, bias in logit_bias.items()}
    return SamplingParams(**{k: v for k, v in options.items() if v is not None})


def split_stop(stop: str | list[str] | None) -> tuple[str, ...]:
    """Stop sequences as the OpenAI APIs take them: a string is split on commas (as the hosted
    API does), an array is taken as is; empty sequences are dropped."""
    if stop is None:
        return ()
    items = stop.split(",") if isinstance(stop, str) else stop
    return tuple(s for s in items if s)


def replayed_call(call_id: str, name: str, arguments: str, *, param: str) -> ToolCall:
    """A call from the conversation, its ``arguments`` given as a JSON string (OpenAI's form).

    Raises:
        ChatFormatError: the arguments are not a JSON object, so the call cannot be rendered
            back in Gemma's call format (400).
    """
    try:
        # No arguments at all is an empty object (clients send "" for parameterless functions).
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ChatFormatError("The arguments of a function call must be a JSON object, as a string.", param=param)
    return ToolCall(id=call_id, name=name, arguments=value)


def assistant_message(parts: Sequence[ContentPart], calls: Sequence[ToolCall] = ()) -> ChatMessage:
    """An assistant turn: its text and the calls it made (rendered back as the model writes them)."""
    return ChatMessage(role="assistant", content=tuple(parts), tool_calls=tuple(calls))


def function_tool(
    name: str, description: str | None, parameters: dict[str, Any] | None, strict: bool | None
) -> ToolSpec:
    """A function definition from any API; no ``parameters`` schema means no arguments."""
    if parameters is None:
        return ToolSpec(name=name, description=description or "", strict=bool(strict))
    return ToolSpec(name, description or "", parameters, bool(strict))


def named_tool(name: str, tools: Sequence[ToolSpec]) -> NamedToolChoice:
    """A tool choice naming one function, which must be among ``tools``.

    Raises:
        InvalidRequestError: it is not (400, param ``tool_choice``).
    """
    if all(tool.name != name for tool in tools):
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not in tools.",
            param="tool_choice",
            code="invalid_tool_choice",
        )
    return NamedToolChoice(name)
