"""Request-body types that more than one API's schemas use."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, Field

#: A token id as a ``logit_bias`` key: what the validator accepts is what the schema says.
_TOKEN_ID = re.compile(r"^[0-9]+$")


def _token_ids(value: dict[str, float]) -> dict[str, float]:
    for key in value:
        # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
        if not _TOKEN_ID.fullmatch(key):
            raise ValueError(f"keys must be token ids (integers as strings), got {key!r}")
    return value


#: ``logit_bias``: token id (as a string) → bias added to its logit.
LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100, le=100)]],
    AfterValidator(_token_ids),
    Field(json_schema_extra={"propertyNames": {"pattern": _TOKEN_ID.pattern}}),
]


def str_or_dict(value: Any) -> str:
    """The ``Discriminator`` of a union of a string and an object: tags them ``str`` / ``dict``,
    so an error names the one branch the value was meant for."""
    return "str" if isinstance(value, str) else "dict"


def forced_choice_needs_tools(forced_choice: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema (``if``/``then``) of the rule that a ``tool_choice`` forcing a call
    (``forced_choice``: the subschema of such choices) needs at least one tool, so that
    /openapi.json calls invalid what the request model refuses."""
    return {
        "if": {"required": ["tool_choice"], "properties": {"tool_choice": forced_choice}},
        "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
    }


def check_forced_choice_has_tools(forces_a_call: bool, tools: list[Any] | None) -> None:
    """The rule of :func:`forced_choice_needs_tools`, for a request model's validator."""
    if forces_a_call and not tools:
        raise ValueError("this tool_choice forces a function call: send at least one tool in tools")


def reject_lone_surrogates(data: Any) -> Any:
    """A ``model_validator(mode="before")`` body: refuse text JSON allows but UTF-8 cannot carry.

    ``"\\ud800"`` is valid JSON yet no valid text; echoed back or stored, it could not be encoded
    (a 500). Refused here, anywhere in the body, it is a 400 naming where it was found.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{path or 'the body'} contains an unpaired UTF-16 surrogate; send valid text"
                ) from None
        elif isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
            # Keys go on top, so a bad key is found before it becomes part of a path (and the message).
            stack.extend((path or "the body", k) for k in value)
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return data


def integral_numbers(*names: str) -> Callable[[Any], Any]:
    """A ``model_validator(mode="before")`` body: ``3.0`` for an integer field ``names`` is ``3``.

    JSON has one number type, and JSON Schema (so /openapi.json) calls 3.0 an integer; strict
    validation alone would refuse it. ``3.5``, ``"3"`` and ``true`` stay refused.
    """

    def convert(data: Any) -> Any:
        if isinstance(data, dict):
            for name in names:
                value = data.get(name)
                if isinstance(value, float) and value.is_integer():
                    data = {**data, name: int(value)}
        return data

    return convert
