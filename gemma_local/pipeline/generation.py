"""One running request: its choices' events as they are generated, or the whole outcome.

A :class:`Generation` wraps the engine streams of a request's ``n`` choices. Each choice's
text goes through its :class:`~gemma_local.pipeline.tooling.CallSplitter`, so what comes out
is content (:class:`ChoiceDelta`), whole calls (:class:`ChoiceToolCall`) and one
:class:`ChoiceEnd` per choice — the same for every API and for the CLI. What the generation
did (tokens, time to first token, speed) goes to a :class:`GenerationObserver` that the
caller passes in (the server's metrics and request log); nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from gemma_local.engine import Finished, GenerationStream, TextDelta, Timings, Usage
from gemma_local.engine.tools import ToolPlan
from gemma_local.engine.types import TokenLogprob, ToolCall
from gemma_local.errors import EngineClosedError, GemmaLocalError, GenerationError
from gemma_local.pipeline.grounding import Grounding
from gemma_local.pipeline.request import PipelineRequest
from gemma_local.pipeline.tooling import CallSplitter, TextPiece


@dataclass(frozen=True)
class ChoiceDelta:
    """New text for choice ``index`` (with logprobs of the tokens it came from, if asked)."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ChoiceToolCall:
    """Choice ``index`` made a whole function call (it comes after the choice's text deltas)."""

    index: int
    call: ToolCall


#: ``tool_calls``: the choice ended by calling functions (its ``ChoiceToolCall`` events).
PipelineFinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ChoiceEnd:
    """Choice ``index`` is complete."""

    index: int
    finish_reason: PipelineFinishReason
    stop_sequence: str | None
    usage: Usage
    timings: Timings


ChoiceEvent = ChoiceDelta | ChoiceToolCall | ChoiceEnd


@dataclass(frozen=True)
class ChoiceResult:
    """One whole choice, collected."""

    index: int
    text: str
    finish_reason: PipelineFinishReason
    stop_sequence: str | None
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class GenerationOutcome:
    """Every choice of a request, and the request's usage."""

    id: str
    model: str
    created: int
    choices: tuple[ChoiceResult, ...]
    usage: Usage
    #: Set when the request asked for the search hook (``web_search_linkup``).
    grounding: Grounding | None = None


def combine_usage(usages: Sequence[Usage]) -> Usage:
    """Usage of ``n`` choices of one prompt: the prompt counts once, completions add up."""
    if not usages:
        return Usage(prompt_tokens=0, completion_tokens=0)
    return Usage(
        prompt_tokens=usages[0].prompt_tokens,
        completion_tokens=sum(u.completion_tokens for u in usages),
        cached_tokens=min(u.cached_tokens for u in usages),
        draft_tokens=sum(u.draft_tokens for u in usages),
        accepted_tokens=sum(u.accepted_tokens for u in usages),
    )


@dataclass
class _Progress:
    ends: dict[int, ChoiceEnd] = field(default_factory=dict)
    tokens_seen: int = 0


@dataclass(frozen=True)
class GenerationSummary:
    """What a request's generation did, once it is over (finished, failed or cancelled)."""

    #: The finish reasons of its choices (``length,stop``), or ``cancelled`` / ``partial``.
    finish: str
    #: Tokens generated, counted as they streamed (a cut-short generation included).
    completion_tokens: int
    #: Usage of the choices that ended (None if none did).
    usage: Usage | None = None
    time_to_first_token_s: float | None = None
    tokens_per_s: float | None = None


class GenerationObserver(Protocol):
    """Who is told what a generation did (the server: its metrics and its request log)."""

    def request_started(self, request: PipelineRequest) -> None:
        """The request passed its checks and its choices are being submitted."""

    def choice_finished(self, endpoint: str, event: Finished) -> None:
        """One choice ended (any finish reason)."""

    def generation_over(self, summary: GenerationSummary) -> None:
        """The generation is over: every choice ended, or it was cut short."""


class Generation:
    """The running choices of one request. Consume it once, with :meth:`events` or :meth:`result`.

    Whoever starts a generation owns it until it is consumed: if it is never read (the client
    left, or a later step failed), :meth:`cancel` frees its slots.
    """

    def __init__(
        self,
        request: PipelineRequest,
        streams: list[GenerationStream],
        observer: GenerationObserver | None = None,
        grounding: Grounding | None = None,
        tool_plan: ToolPlan | None = None,
        own_stops: tuple[str, ...] = (),
    ) -> None:
        self.id = request.request_id
        #: The search hook's sources, footer and metadata (None unless web search was asked).
        self.grounding = grounding
        self.model = request.model
        self.created = int(time.time())
        self.n = len(streams)
        self._endpoint = request.endpoint
        self._streams = streams
        self._observer = observer
        self._progress = _Progress()
        self._consumed = False
        # Stop sequences the tool plan added: the client did not ask for them, so an answer
        # they end is reported as a plain stop.
        self._own_stops = own_stops
        # JSON requested as the answer: a leading "{" is content, not a call without its fence.
        bare_calls = request.output_format is None or request.output_format.response_schema is None
        self._splitters = [CallSplitter(tool_plan, request.tools, bare_calls=bare_calls) for _ in streams]

    @property
    def prompt_tokens(self) -> int:
        """Tokens in the prompt (images included), known before the first event."""
        return self._streams[0].prompt_tokens if self._streams else 0

    @property
    def usage(self) -> Usage:
        """Usage of the choices finished so far (all of them once :meth:`events` is exhausted)."""
        ends = self._progress.ends
        return combine_usage([ends[i].usage for i in sorted(ends)])

    def cancel(self) -> None:
        """Stop every choice still generating. Idempotent."""
        for stream in self._streams:
            stream.cancel()

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        """Deltas and ends of all choices, interleaved as they are generated.

        Leaving the loop early (or the task being cancelled: a client disconnect) cancels every
        choice at once.

        Raises:
            GenerationError, EngineClosedError: the engine failed or shut down mid-generation;
                the other choices are cancelled.
        """
        if self._consumed:
            raise RuntimeError("A Generation can be consumed only once.")
        self._consumed = True
        queue: asyncio.Queue[tuple[int, TextDelta | Finished | BaseException]] = asyncio.Queue()

        async def pump(index: int, stream: GenerationStream) -> None:
            try:
                async for event in stream:
                    queue.put_nowait((index, event))
            except Exception as e:  # surfaces in the consumer, never lost in a task
                queue.put_nowait((index, e))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            while len(self._progress.ends) < self.n:
                index, event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                splitter = self._splitters[index]
                if isinstance(event, TextDelta):
                    self._progress.tokens_seen += event.n_tokens
                    for item in _choice_events(index, splitter.feed(event.text, event.logprobs)):
                        yield item
                    continue
                end = self._end(index, event)
                for item in _choice_events(index, splitter.finish()):
                    yield item
                if splitter.made_calls:
                    if end.finish_reason == "stop":
                        end = replace(end, finish_reason="tool_calls")
                elif self.grounding is not None and self.grounding.footer:
                    # The "Sources" footer is the answer's last text, streamed or not.
                    yield ChoiceDelta(index=index, text=self.grounding.footer)
                self._progress.ends[index] = end
                yield end
        finally:
            for task in tasks:
                task.cancel()
            self.cancel()
            self._report()

    async def result(self) -> GenerationOutcome:
        """Wait for every choice and return them whole."""
        texts: dict[int, list[str]] = {i: [] for i in range(self.n)}
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(self.n)}
        calls: dict[int, list[ToolCall]] = {i: [] for i in range(self.n)}
        ends: dict[int, ChoiceEnd] = {}
        async for event in self.events():
            if isinstance(event, ChoiceDelta):
                texts[event.index].append(event.text)
                logprobs[event.index].extend(event.logprobs)
            elif isinstance(event, ChoiceToolCall):
                calls[event.index].append(event.call)
            else:
                ends[event.index] = event
        choices = tuple(
            ChoiceResult(
                index=i,
                text="".join(texts[i]),
                finish_reason=ends[i].finish_reason,
                stop_sequence=ends[i].stop_sequence,
                usage=ends[i].usage,
                logprobs=tuple(logprobs[i]),
                tool_calls=tuple(calls[i]),
                timings=ends[i].timings,
            )
            for i in range(self.n)
        )
        return GenerationOutcome(
            id=self.id,
            model=self.model,
            created=self.created,
            choices=choices,
            usage=self.usage,
            grounding=self.grounding,
        )

    def _end(self, index: int, event: Finished) -> ChoiceEnd:
        if self._observer is not None:
            self._observer.choice_finished(self._endpoint, event)
        if event.finish_reason == "error":
            raise (
                event.error
                if isinstance(event.error, GemmaLocalError)
                else GenerationError(f"Generation failed: {event.error or 'unknown error'}")
            )
        if event.finish_reason == "cancelled":
            # We did not cancel it (we are still listening): the engine is shutting down.
            raise EngineClosedError()
        return ChoiceEnd(
            index=index,
            finish_reason=event.finish_reason,
            stop_sequence=None if event.stop_sequence in self._own_stops else event.stop_sequence,
            usage=event.usage,
            timings=event.timings,
        )

    def _report(self) -> None:
        if self._observer is not None:
            self._observer.generation_over(self.summary())

    def summary(self) -> GenerationSummary:
        """What the generation did so far (complete once :meth:`events` is exhausted)."""
        ends = list(self._progress.ends.values())
        seen = self._progress.tokens_seen
        if len(ends) < self.n:
            finish = "cancelled" if not ends else "partial"
        else:
            finish = ",".join(sorted({e.finish_reason for e in ends}))
        if not ends:
            return GenerationSummary(finish, seen)
        usage = combine_usage([e.usage for e in ends])
        ttfts = [e.timings.time_to_first_token_s for e in ends if e.timings.time_to_first_token_s > 0]
        generation_s = max(e.timings.generation_s for e in ends)
        return GenerationSummary(
            finish=finish,
            completion_tokens=max(usage.completion_tokens, seen),
            usage=usage,
            time_to_first_token_s=min(ttfts) if ttfts else None,
            tokens_per_s=(
                usage.completion_tokens / generation_s if usage.completion_tokens > 1 and generation_s > 0 else None
            ),
        )


def _choice_events(index: int, items: list[TextPiece | ToolCall]) -> list[ChoiceDelta | ChoiceToolCall]:
    return [
        ChoiceToolCall(index=index, call=item)
        if isinstance(item, ToolCall)
        else ChoiceDelta(index=index, text=item.text, logprobs=item.logprobs)
        for item in items
    ]


