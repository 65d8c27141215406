"""The Responses API's tools, both ways: what the model is offered, and how its calls come back.

Codex and other agents send more than flat function tools:

- ``namespace`` groups: their functions are offered to the model by their own names (the
  namespace's name joins in front, ``ns.fn``, only where two namespaces share a function name),
  and a call comes back as a ``function_call`` whose ``name`` is the inner function's and whose
  ``namespace`` names the group — the shape Codex matches its tools by;
- ``custom`` tools take free-form text, not JSON: the model is offered a function with one
  string argument ``input`` (a ``regex`` grammar format constrains it; a Lark grammar is shown
  to the model but not enforced), and a call comes back as a ``custom_tool_call`` with the raw
  ``input``;
- hosted ``web_search`` is served by gemma-local's search hook (see the pipeline's hosted
  search), so it is not a function the client runs.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from gemma_local.engine.types import ToolCall
from gemma_local.errors import InvalidRequestError
from gemma_local.pipeline import HostedSearch, ToolChoice, ToolSpec, TruncatedCall
from gemma_local.pipeline.conversation import function_tool, named_tool
from gemma_local.server.openai_responses_schemas import (
    CustomToolCall,
    CustomToolParam,
    FunctionCall,
    FunctionToolParam,
    NamespaceToolParam,
    ResponseCreateRequest,
    ToolChoiceCustom,
    ToolChoiceFunction,
    ToolChoiceHosted,
    ToolParam,
    WebSearchToolParam,
)

ItemStatus = Literal["in_progress", "completed", "incomplete"]


@dataclass(frozen=True)
class ToolRoute:
    """How a function the model calls maps back to the client's tool."""

    kind: Literal["function", "custom"]
    #: The tool's name as the client declared it (inside its namespace, if any).
    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class ResponsesTools:
    """The request's tools as the model sees them, and the way back to the client's names."""

    specs: tuple[ToolSpec, ...] = ()
    #: Model-facing function name → the client's tool.
    routes: dict[str, ToolRoute] = field(default_factory=dict)
    #: The hosted web search, when the request offers it.
    web_search: HostedSearch | None = None

    def model_name(self, name: str, namespace: str | None = None) -> str:
        """The name the model knows a client tool by (for replayed calls)."""
        for model_name, route in self.routes.items():
            if route.name == name and route.namespace == namespace:
                return model_name
        return name if namespace is None else f"{namespace}.{name}"

    def route(self, call: ToolCall | TruncatedCall) -> ToolRoute:
        return self.routes.get(call.name, ToolRoute("function", call.name))

    def item(self, call: ToolCall | TruncatedCall, status: ItemStatus) -> FunctionCall | CustomToolCall:
        """The output item for a call (``arguments``/``input`` whole, as done items carry them)."""
        route = self.route(call)
        if route.kind == "custom":
            return CustomToolCall(
                id=call.id_for("ctc_"),
                call_id=call.id,
                name=route.name,
                input=custom_input(call),
                status=status,
                namespace=route.namespace,
            )
        return FunctionCall(
            id=call.id_for("fc_"),
            call_id=call.id,
            name=route.name,
            arguments=call.arguments_json,
            status=status,
            namespace=route.namespace,
        )


def custom_input(call: ToolCall | TruncatedCall) -> str:
    """A custom tool's raw input: the model wrote it as the string argument ``input``."""
    if isinstance(call, TruncatedCall):
        # The arguments' JSON as far as it got: keep the text of the input string, not its wrapping.
        text = call.arguments.lstrip()
        for prefix in ('{"input": "', '{"input":"'):
            if text.startswith(prefix):
                rest = text[len(prefix) :].rstrip("\\")
                try:
                    return json.loads(f'"{rest}"')
                except ValueError:  # cut inside an escape: the raw text is the best there is
                    return rest
        return text
    value = call.arguments.get("input", "")
    return value if isinstance(value, str) else str(value)


def _custom_spec(name: str, tool: CustomToolParam) -> ToolSpec:
    fmt = tool.format or {}
    text: dict[str, object] = {"type": "string", "description": "The tool's input, as free-form text."}
    description = tool.description or ""
    if fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
        if fmt.get("syntax") == "regex":
            text["pattern"] = fmt["definition"]
        else:  # Lark: shown to the model, not enforced by the grammar
            description += f"\nThe input follows this {fmt.get('syntax', 'grammar')} grammar:\n{fmt['definition']}"
    parameters = {"type": "object", "properties": {"input": text}, "required": ["input"], "additionalProperties": False}
    return ToolSpec(name, description.strip(), parameters)


def responses_tools(tools: list[ToolParam] | None) -> ResponsesTools:
    """Flatten the request's tools into the functions the model is offered."""
    entries: list[tuple[str | None, FunctionToolParam | CustomToolParam]] = []
    web_search: HostedSearch | None = None
    for tool in tools or []:
        if isinstance(tool, NamespaceToolParam):
            entries += [(tool.name, inner) for inner in tool.tools]
        elif isinstance(tool, WebSearchToolParam):
            # false: cache-only, i.e. the local index and ZIM archives, never an online provider.
            web_search = HostedSearch(online=tool.external_web_access is not False)
        else:
            entries.append((None, tool))
    counts = Counter(tool.name for _, tool in entries)
    specs: list[ToolSpec] = []
    routes: dict[str, ToolRoute] = {}
    for namespace, tool in entries:
        model_name = tool.name if namespace is None or counts[tool.name] == 1 else f"{namespace}.{tool.name}"
        if isinstance(tool, CustomToolParam):
            specs.append(_custom_spec(model_name, tool))
            routes[model_name] = ToolRoute("custom", tool.name, namespace)
        else:
            specs.append(function_tool(model_name, tool.description, tool.parameters, tool.strict))
            routes[model_name] = ToolRoute("function", tool.name, namespace)
    return ResponsesTools(tuple(specs), routes, web_search)


def tool_choice(body: ResponseCreateRequest, tools: ResponsesTools) -> ToolChoice:
    """The request's ``tool_choice`` over the flattened tools.

    Raises:
        InvalidRequestError: it names a tool (or the hosted web search) not offered (400).
    """
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceFunction | ToolChoiceCustom):
        return named_tool(tools.model_name(choice.name), tools.specs)
    if isinstance(choice, ToolChoiceHosted):
        if tools.web_search is None:
            raise InvalidRequestError(
                f"tool_choice asks for {choice.type}, which is not in tools.",
                param="tool_choice",
                code="invalid_tool_choice",
            )
        return named_tool(tools.web_search.name, (*tools.specs, tools.web_search.spec()))
    return choice or "auto"
