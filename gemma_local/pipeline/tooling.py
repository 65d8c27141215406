"""Function calling and structured output on the common request path, for every API at once.

Each API translates its own ``tools``/``tool_choice`` and output format into
:class:`~gemma_local.engine.tools.ToolSpec`, a tool choice and an :class:`OutputFormat`. Here
they become what the engine needs (:func:`plan_generation`: the tool instructions as a
system message, a grammar for forced calls or JSON output), and each choice's text is split
back into content and calls (:class:`CallSplitter`) with the engine's own parser, so a call
is recognised the same way whether the answer is streamed or not, whichever API asked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gemma_local.engine import ChatMessage, GenerationRequest
from gemma_local.engine.tool_parser import ToolCallStreamFilter, new_call_id
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


@dataclass(frozen=True)
class TruncatedCall:
    """A call the answer was cut in by its token limit: as much of it as the model wrote.

    Each API reports it where it has a place for a cut call (Chat: a ``tool_calls`` entry with
    the partial ``arguments``, finish reason ``length``; Responses: an ``incomplete``
    ``function_call`` item), and never as text.
    """

    id: str
    #: "" when the output ended before the function's name was complete.
    name: str
    #: The arguments' JSON text as far as it got ("" if the model had not reached them).
    arguments: str

    @property
    def arguments_json(self) -> str:
        """The partial arguments, where a whole call has its JSON text (as :class:`ToolCall`)."""
        return self.arguments

    def id_for(self, prefix: str) -> str:
        """This call's id under another prefix (as :meth:`ToolCall.id_for`)."""
        return prefix + self.id.split("_", 1)[-1]


_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGUMENTS = re.compile(r'"(?:parameters|arguments)"\s*:\s*')


def truncated_call(text: str) -> TruncatedCall:
    """What a call cut short says: its name if complete, its arguments' text so far."""
    name = _NAME.search(text)
    arguments = _ARGUMENTS.search(text)
    return TruncatedCall(
        id=new_call_id(),
        name=name.group(1) if name else "",
        arguments=text[arguments.end() :] if arguments else "",
    )


SplitItem = TextPiece | ToolCall | TruncatedCall


class CallSplitter:
    """One choice's output as content and calls, in order.

    Without a plan that parses calls, text passes through untouched (empty deltas included,
    they may carry logprobs). With one, text that may still become a call is held back; the
    logprobs of held-back tokens go out with the next content text (a call has none).

    A choice whose calls are complete asks to be stopped (:attr:`wants_stop`): a call
    identical to one it already made (a small model under a forcing grammar repeats itself
    until the token limit), or any call after the first when parallel calls are off. The
    repeated or extra call is dropped.

    Args:
        plan: the request's tool plan (None: no tools).
        tools: the functions on offer (calls naming others stay text).
        bare_calls: accept a call without its fence at the start of the answer (off when the
            answer is JSON by request, so JSON content is not mistaken for a call).
        parallel: several calls may make one answer.
    """

    def __init__(
        self, plan: ToolPlan | None, tools: Sequence[ToolSpec], *, bare_calls: bool = True, parallel: bool = True
    ) -> None:
        self._filter = ToolCallStreamFilter(tools, bare_calls=bare_calls) if plan and plan.parse_calls else None
        self._parallel = parallel
        self._held: list[TokenLogprob] = []
        self._made: set[tuple[str, str]] = set()
        self.made_calls = False
        self.wants_stop = False

    def feed(self, text: str, logprobs: tuple[TokenLogprob, ...] = ()) -> list[SplitItem]:
        """The next delta of the choice; returns what is now certain."""
        if self._filter is None:
            return [TextPiece(text, logprobs)]
        if self.wants_stop:
            return []  # the rest of a choice being stopped is not part of the answer
        self._held.extend(logprobs)
        return self._pieces(self._filter.feed(text))

    def finish(self, *, truncated: bool = False) -> list[SplitItem]:
        """The choice ended: everything still held back.

        Args:
            truncated: it ended at its token limit: a call it was writing is a
                :class:`TruncatedCall` (otherwise an unfinished call is content).
        """
        if self._filter is None:
            return []
        if self.wants_stop:
            self._filter.finish()
            return []
        cut = self._filter.take_unfinished_call() if truncated else None
        items = self._pieces(self._filter.finish())
        if cut is not None:
            items.append(truncated_call(cut))
        return items

    def _pieces(self, items: list[str | ToolCall]) -> list[SplitItem]:
        out: list[SplitItem] = []
        for item in items:
            if self.wants_stop:
                break
            if isinstance(item, ToolCall):
                key = (item.name, item.arguments_json)
                if key in self._made or (self.made_calls and not self._parallel):
                    self.wants_stop = True
                    break
                self._made.add(key)
                self.made_calls = True
                out.append(item)
            else:
                out.append(TextPiece(item, tuple(self._held)))
                self._held.clear()
        return out
