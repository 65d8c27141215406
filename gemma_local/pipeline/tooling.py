"""Function calling and structured output on the common request path, for every API at once.

Each API translates its own ``tools``/``tool_choice`` and output format into
:class:`~gemma_local.engine.tools.ToolSpec`, a tool choice and an :class:`OutputFormat`. Here
they become what the engine needs (:func:`plan_generation`: the tool instructions as a
system message, a grammar for forced calls or JSON output), and each choice's text is split
back into content and calls (:class:`CallSplitter`) with the engine's own parser, so a call
is recognised the same way whether the answer is streamed or not, whichever API asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gemma_local.engine import ChatMessage, GenerationRequest
from gemma_local.engine.tool_parser import ToolCallStreamFilter
from gemma_local.engine.tools import ToolChoice, ToolPlan, ToolSpec, plan_tools
from gemma_local.engine.types import TokenLogprob, ToolCall


@dataclass(frozen=True)
class OutputFormat:
    """Structured output: Chat ``response_format``, Responses ``text.format``, Anthropic
    ``output_config.format``."""

    type: Literal["text", "json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False
    #: Where the request holds the schema, for errors (``text.format.schema``…).
    param: str = "response_format"

    @property
    def response_schema(self) -> dict[str, Any] | None:
        """The schema the answer must follow (JSON mode: any object); None for free text."""
        if self.type == "json_schema":
            return self.schema or {}
        if self.type == "json_object":
            return {"type": "object"}
        return None


def plan_generation(
    generation: GenerationRequest,
    tools: Sequence[ToolSpec],
    tool_choice: ToolChoice,
    output_format: OutputFormat | None,
    *,
    parallel: bool = True,
) -> tuple[GenerationRequest, ToolPlan | None]:
    """The generation the engine runs for a request with tools or a structured output.

    Returns:
        The generation with the tool instructions leading the conversation and the grammar in
        its sampling, and the plan (None, and the generation unchanged, when neither applies).

    Raises:
        UnsupportedSchemaError: a schema cannot be enforced (400).
        InvalidRequestError: a named tool choice names no tool, or ``required`` has none (400).
    """
    schema = output_format.response_schema if output_format is not None else None
    if not tools and schema is None and tool_choice in ("none", "auto"):
        return generation, None
    plan = plan_tools(
        tools,
        tool_choice,
        parallel=parallel,
        response_schema=schema,
        response_strict=bool(output_format and output_format.strict),
        response_param=output_format.param if output_format is not None else "response_format",
    )
    update: dict[str, Any] = {}
    if plan.instructions:
        update["messages"] = (ChatMessage.text("system", plan.instructions), *generation.messages)
    if plan.grammar:
        update["sampling"] = generation.sampling.model_copy(
            update={"grammar": plan.grammar, "grammar_trigger": plan.grammar_trigger}
        )
    if plan.stop:
        update["stop"] = (*generation.stop, *(s for s in plan.stop if s not in generation.stop))
    return generation.model_copy(update=update), plan


@dataclass(frozen=True)
class TextPiece:
    """Content text, with the logprobs of the tokens it came from."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


class CallSplitter:
    """One choice's output as content and calls, in order.

    Without a plan that parses calls, text passes through untouched (empty deltas included,
    they may carry logprobs). With one, text that may still become a call is held back; the
    logprobs of held-back tokens go out with the next content text (a call has none).

    Args:
        plan: the request's tool plan (None: no tools).
        tools: the functions on offer (calls naming others stay text).
        bare_calls: accept a call without its fence at the start of the answer (off when the
            answer is JSON by request, so JSON content is not mistaken for a call).
    """

    def __init__(self, plan: ToolPlan | None, tools: Sequence[ToolSpec], *, bare_calls: bool = True) -> None:
        self._filter = ToolCallStreamFilter(tools, bare_calls=bare_calls) if plan and plan.parse_calls else None
        self._held: list[TokenLogprob] = []
        self.made_calls = False

    def feed(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> list[TextPiece | ToolCall]:
        """The next delta of the choice; returns what is now certain."""
        if self._filter is None:
            return [TextPiece(text, logprobs)]
        self._held.extend(logprobs)
        return self._pieces(self._filter.feed(text))

    def finish(self) -> list[TextPiece | ToolCall]:
        """The choice ended: everything still held back (an unfinished call is content)."""
        if self._filter is None:
            return []
        return self._pieces(self._filter.finish())

    def _pieces(self, items: list[str | ToolCall]) -> list[TextPiece | ToolCall]:
        out: list[TextPiece | ToolCall] = []
        for item in items:
            if isinstance(item, ToolCall):
                self.made_calls = True
                out.append(item)
            else:
                out.append(TextPiece(item, tuple(self._held)))
                self._held.clear()
        return out
