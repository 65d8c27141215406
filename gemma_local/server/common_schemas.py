"""Request-body types that more than one API's schemas use."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, model_validator

from gemma_local.engine import SamplingParams
from gemma_local.pipeline.conversation import sampling_params

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


class SearchHookFields(BaseModel):
    """The search hook's switches (the hosted API's own options), on every API's request."""

    web_search_linkup: bool | None = Field(
        False, description="Search the web (or the offline index) with the latest user message and cite sources."
    )
    disable_formatting: bool | None = Field(False, description="No 'Sources' footer on web-search answers.")

    def search_hook(self) -> dict[str, bool]:
        """The pipeline request's ``web_search`` and ``disable_formatting``."""
        return {"web_search": bool(self.web_search_linkup), "disable_formatting": bool(self.disable_formatting)}


class SamplingFields(BaseModel):
    """The sampling options every API's request takes, and what they mean to the engine.

    The hosted API's own options (``temperature``, ``top_p``, the penalties) and llama.cpp's
    extras (``top_k``, ``min_p``, ``repeat_penalty``, ``seed``, ``logit_bias``) under one
    definition, so the three APIs accept, bound and map them alike. Null or omitted: the
    hosted API's default.
    """

    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Default 0.7; 0 is greedy.")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Default 1.")
    frequency_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Default 0; above 0 discourages repeating tokens."
    )
    presence_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Default 0; above 0 encourages new topics."
    )
    seed: int | None = Field(None, description="Same seed and request, same output.")
    top_k: int | None = Field(None, ge=0, description="Extension: top-k sampling (default 0: off).")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Extension: min-p sampling.")
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0, description="Extension: 1.0 disables it.")
    logit_bias: LogitBias | None = Field(None, description="Token id (as a string) → bias added to its logit.")

    _integral_sampling = model_validator(mode="before")(integral_numbers("seed", "top_k"))

    def to_sampling(self) -> SamplingParams:
        """The engine's sampling parameters: the options set, the hosted defaults for the rest."""
        return sampling_params(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            frequency_penalty=self.frequency_penalty,
            presence_penalty=self.presence_penalty,
            repeat_penalty=self.repeat_penalty,
            seed=self.seed,
            logit_bias=self.logit_bias,
        )


#: A keep-alive: seconds, or a duration such as ``30s``, ``5m``, ``1h30m`` (negative: forever).
KeepAlive = Annotated[str, Field(pattern=r"^-?(\d+(\.\d+)?|(\d+(\.\d+)?(ms|s|m|h))+)$")] | int | float


class ServingFields(BaseModel):
    """gemma-local's extension for which model stays loaded (every generating API takes it)."""

    keep_alive: KeepAlive | None = Field(
        None,
        description="Extension: how long the model stays loaded once idle after this request, e.g. '30s', '5m', "
        "'1h' or seconds; 0 unloads it when the request ends, -1 keeps it loaded (default: the server's "
        "--keep-alive). Ignored by a server started with --model.",
    )
