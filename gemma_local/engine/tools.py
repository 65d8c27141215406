"""Function calling for Gemma 3: tool definitions in the prompt, a call format, and forced calls.

Gemma 3 has no tool tokens. Following Google's guidance, the function definitions go into the
first user turn as JSON, with the instruction to answer with only the call when calling. The
call format is a fenced ``tool_call`` block holding Google's JSON form of a call::

    ```tool_call
    {"name": "get_weather", "parameters": {"city": "Paris"}}
    ```

Several calls are several blocks, one after another (a JSON list of calls inside one block
is also understood). Tool results go back as ``tool_output`` blocks in the user's turn, the
other half of Google's convention (rendered by ``chat_format``).

Why this format:

- JSON, not Python-style ``[f(a=1)]``: arguments are JSON Schema-typed, so a JSON call can
  be parsed without a Python-literal parser and constrained by the same grammar as
  structured outputs (``tool_call_grammar``).
- In a fence: the marker ```` ```tool_call ```` tells a call apart from JSON the user asked
  for as text, lets a model write a sentence before its call, and mirrors ``tool_output``.
- While streaming, only text that might open a fence (a backtick) or begin a bare call at the
  start of the answer has to be held back; everything else streams at once.

What counts as a call (``tool_parser``): a ```` ```tool_call ```` (or ``tool_code``,
``json``, untagged) fenced block anywhere in the answer whose body is one or more JSON
objects ``{"name": <a tool offered>, "parameters": {...}}`` (``arguments`` is accepted for
``parameters``); or such JSON (an object or a list) with no fence, when it is the first thing
in the answer or follows another call. Anything else, including an unknown name, broken
JSON or a call cut short, stays text. Text around calls is kept as content.

With ``tool_choice`` ``required`` or a named function, decoding is constrained by a grammar
that only allows well-formed call blocks whose arguments are valid against the function's
JSON schema; ``auto`` lets the model choose, and the same grammar takes over once it opens a
```` ```tool_call ```` fence (a lazy grammar), so a call it makes is well-formed too; ``none``
offers no tools at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gemma_local.engine import gbnf
from gemma_local.engine.json_schema import GrammarBuilder
from gemma_local.engine.tool_parser import ParsedOutput, StreamItem, ToolCallStreamFilter, new_call_id, parse_tool_calls
from gemma_local.engine.types import ToolCall
from gemma_local.errors import InvalidRequestError

__all__ = [
    "CALL_FENCE",
    "MAX_PARALLEL_CALLS",
    "RESULT_FENCE",
    "NamedToolChoice",
    "ParsedOutput",
    "StreamItem",
    "ToolCall",
    "ToolCallStreamFilter",
    "ToolChoice",
    "ToolPlan",
    "ToolSpec",
    "new_call_id",
    "parse_tool_calls",
    "plan_tools",
    "render_tool_call",
    "render_tool_calls",
    "render_tool_instructions",
    "tool_call_grammar",
]

#: The info string of the fence that holds calls.
CALL_FENCE = "tool_call"
#: How a tool result starts in the prompt (rendered by ``chat_format``); the model never writes one.
RESULT_FENCE = "```tool_output"
#: Most calls a forced (``required``) answer may hold; keeps a looping small model bounded.
MAX_PARALLEL_CALLS = 8

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call.

    Args:
        name: letters, digits, ``_ . -``; at most 128 characters.
        description: what it does, shown to the model.
        parameters: JSON Schema of the arguments object (default: no arguments).
        strict: apply OpenAI's strict-schema rules to ``parameters`` (see ``json_schema``).

    Raises:
        InvalidRequestError: the name or the parameters schema is malformed.
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidRequestError(
                f"Invalid tool name {self.name!r}: use 1-128 letters, digits, '_', '.' or '-'.", param="tools"
            )
        if not isinstance(self.parameters, dict) or self.parameters.get("type", "object") != "object":
            raise InvalidRequestError(
                f"The parameters of tool {self.name!r} must be a JSON schema of type 'object'.", param="tools"
            )

    def definition(self) -> dict[str, Any]:
        """The JSON definition shown to the model."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["parameters"] = self.parameters
        return out


@dataclass(frozen=True)
class NamedToolChoice:
    """``tool_choice`` naming one function the model must call."""

    name: str


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# --- rendering ----------------------------------------------------------------------------


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """One call in the documented format (a fenced ``tool_call`` block)."""
    body = json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)
    return f"```{CALL_FENCE}\n{body}\n```"


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """Calls from a replayed assistant turn, exactly as the model writes them."""
    return "\n".join(render_tool_call(c.name, c.arguments) for c in calls)


def render_tool_instructions(tools: Sequence[ToolSpec], tool_choice: ToolChoice = "auto") -> str:
    """The text that offers ``tools`` to the model (to put before the first user message).

    The text is the same whatever ``tool_choice`` forces (``required``, a named function):
    forcing is the grammar's job. Agents switch the choice between turns (an SDK forces the
    first call, then lets the model answer), and instructions that changed with it would
    change the prompt near its start, so the next turn could reuse none of the cached prompt.

    Args:
        tools: the functions on offer.
        tool_choice: ``none`` returns ""; any other choice offers the tools the same way.

    Returns:
        Instructions in Google's style: the format, "only the call and no other text", then
        one JSON definition per line. Empty for ``none`` or no tools.
    """
    if tool_choice == "none" or not tools:
        return ""
    example = render_tool_call("function_name", {"argument": "value"})
    lines = [
        "You have access to the functions below. To call a function, reply with a tool_call block "
        "holding a JSON object with the function's name and its parameters, exactly like this:",
        "",
        example,
        "",
        "To call several functions, write one tool_call block per call. If you call a function, reply "
        "with only the tool_call block(s) and no other text. Each result will come back to you in a "
        "tool_output block.",
        "If none of the functions helps, answer normally without calling one.",
        "",
        "Functions:",
    ]
    lines += [json.dumps(t.definition(), ensure_ascii=False) for t in tools]
    return "\n".join(lines)


# --- forcing calls with a grammar -----------------------------------------------------------


def _select(tools: Sequence[ToolSpec], choice: ToolChoice) -> list[ToolSpec]:
    if isinstance(choice, NamedToolChoice):
        chosen = [t for t in tools if t.name == choice.name]
        if not chosen:
            raise InvalidRequestError(
                f"tool_choice names the function {choice.name!r}, which is not among the tools.", param="tool_choice"
            )
        return chosen[:1]
    if not tools:
        raise InvalidRequestError("tool_choice 'required' needs at least one tool.", param="tool_choice")
    return list(tools)


def tool_call_grammar(
    tools: Sequence[ToolSpec],
    tool_choice: ToolChoice,
    *,
    parallel: bool = True,
    response_schema: dict[str, Any] | None = None,
    response_strict: bool = False,
    response_param: str = "response_format",
) -> str | None:
    """A GBNF grammar for the answer, or None when decoding is free.

    Args:
        tools: the functions on offer.
        tool_choice: ``required`` → one or more calls (up to :data:`MAX_PARALLEL_CALLS`, or one
            when ``parallel`` is false), a :class:`NamedToolChoice` → exactly one call of it;
            ``auto``/``none`` → no grammar, unless ``response_schema`` is given.
        parallel: allow several calls in one answer (``required`` only).
        response_schema: a structured-output schema (``{"type": "object"}`` for JSON mode).
            With ``auto`` the answer is then either call block(s) or JSON valid against it;
            with ``none`` it is that JSON.
        response_strict: strict mode for ``response_schema``.
        response_param: the request parameter that holds ``response_schema``, named by errors.

    Returns:
        Grammar text for ``SamplingParams.grammar``; every call it allows has arguments valid
        against the function's ``parameters`` schema.

    Raises:
        UnsupportedSchemaError: a ``parameters`` schema (param ``tools``) or the response
            schema (param ``response_param``) cannot be enforced.
        InvalidRequestError: a named choice names no tool on offer, or ``required`` has none.
    """
    if tool_choice in ("auto", "none") and response_schema is None:
        return None
    b = GrammarBuilder(param="tools")
    text_root = None
    if response_schema is not None:
        b.param = response_param
        text_root = b.add_schema(response_schema, hint="answer", strict=response_strict)
        b.param = "tools"
    if tool_choice == "none" or (tool_choice == "auto" and not tools):
        return b.grammar(text_root or '""')
    chosen = list(tools) if tool_choice == "auto" else _select(tools, tool_choice)
    # The envelope is written exactly as render_tool_call writes it (json.dumps spacing).
    head = gbnf.literal(f'```{CALL_FENCE}\n{{"name": "')
    middle = gbnf.literal('", "parameters": ')
    tail = gbnf.literal("}\n```")
    alternatives = []
    for tool in chosen:
        args = b.add_schema(tool.parameters, hint=f"args-{tool.name}", strict=tool.strict)
        alternatives.append(f"{gbnf.literal(tool.name)} {middle} {args}")
    call = b.rule("call", f"{head} {gbnf.group(alternatives)} {tail}")
    single = isinstance(tool_choice, NamedToolChoice) or not parallel
    calls = call if single else f'{call} ("\\n" {call}){{0,{MAX_PARALLEL_CALLS - 1}}}'
    if tool_choice == "auto":
        return b.grammar(gbnf.group([calls, text_root]) if text_root else calls)
    return b.grammar(calls)


# --- the whole plan for one request ----------------------------------------------------------


@dataclass(frozen=True)
class ToolPlan:
    """What a request with tools needs from the engine."""

    #: Text to put before the conversation (as a system message), or None.
    instructions: str | None
    #: ``SamplingParams.grammar``, or None for free decoding.
    grammar: str | None
    #: Whether to run the output through ``ToolCallStreamFilter`` / ``parse_tool_calls``.
    parse_calls: bool
    #: Stop sequences to add to the request: a model that starts writing a ``tool_output``
    #: block is inventing the result of its own call, so generation ends there.
    stop: tuple[str, ...] = ()
    #: ``SamplingParams.grammar_trigger``: with ``auto``, the grammar constrains only a call the
    #: model starts (from its fence on), so the model may still answer in prose.
    grammar_trigger: str | None = None


def plan_tools(
    tools: Sequence[ToolSpec],
    tool_choice: ToolChoice = "auto",
    *,
    parallel: bool = True,
    response_schema: dict[str, Any] | None = None,
    response_strict: bool = False,
    response_param: str = "response_format",
) -> ToolPlan:
    """Instructions, grammar and parsing for ``tools`` under ``tool_choice``.

    ``none`` offers nothing (the model is not told about the tools; calls in its output stay
    text); ``auto`` offers them and parses calls; ``required`` and named choices add the
    forcing grammar. See :func:`tool_call_grammar` for the arguments.

    Raises:
        UnsupportedSchemaError, InvalidRequestError: as :func:`tool_call_grammar`; also
            ``required`` or a named choice without tools.
    """
    if not tools and tool_choice not in ("none", "auto"):
        raise InvalidRequestError("tool_choice requires tools: send at least one tool.", param="tool_choice")
    offered = bool(tools) and tool_choice != "none"
    grammar = tool_call_grammar(
        tools if offered else (),
        tool_choice if offered else "none",
        parallel=parallel,
        response_schema=response_schema,
        response_strict=response_strict,
        response_param=response_param,
    )
    trigger = None
    if offered and grammar is None:  # auto, answer in free text or calls
        grammar = _lazy_call_grammar(tools, parallel=parallel)
        trigger = f"```{CALL_FENCE}" if grammar else None
    instructions = render_tool_instructions(tools, tool_choice) if offered else ""
    return ToolPlan(
        instructions=instructions or None,
        grammar=grammar,
        parse_calls=offered,
        stop=(RESULT_FENCE,) if offered else (),
        grammar_trigger=trigger,
    )


def _lazy_call_grammar(tools: Sequence[ToolSpec], *, parallel: bool) -> str | None:
    """The call grammar for ``auto``, or None when a tool's schema cannot be enforced.

    With ``auto`` the model may not call at all, so a schema the grammar cannot express (or
    cannot even read, such as a ``pattern`` that is no regex) only costs the guarantee on
    calls, which are still parsed, unless the tool is ``strict``: a promise of schema-valid
    arguments that cannot be kept is a 400, as it is when a call is forced.
    """
    enforceable = True
    for tool in tools:
        try:
            tool_call_grammar([tool], "required", parallel=False)
        except InvalidRequestError:  # UnsupportedSchemaError included
            if tool.strict:
                raise
            enforceable = False
    return tool_call_grammar(tools, "required", parallel=parallel) if enforceable else None
