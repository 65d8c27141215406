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

from gemma_local.engine import ChatMessage, Finished, GenerationStream, TextDelta, TextPart, Timings, Usage
from gemma_local.engine.tools import ToolPlan
from gemma_local.engine.types import TokenLogprob, ToolCall
from gemma_local.errors import EngineClosedError, GemmaLocalError, GenerationError
from gemma_local.pipeline.grounding import Grounding
from gemma_local.pipeline.hosted_search import HostedSearch, SearchResult
from gemma_local.pipeline.request import PipelineRequest
from gemma_local.pipeline.tooling import CallSplitter, SplitItem, TruncatedCall


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


@dataclass(frozen=True)
class ChoiceTruncatedCall:
    """Choice ``index`` hit its token limit in the middle of a call (it then ends with ``length``)."""

    index: int
    call: TruncatedCall


@dataclass(frozen=True)
class ChoiceSearch:
    """Choice ``index`` ran the hosted web search (the pipeline did, through the search hook);
    the model was given the results and goes on with its answer."""

    index: int
    search: SearchResult


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


ChoiceEvent = ChoiceDelta | ChoiceToolCall | ChoiceTruncatedCall | ChoiceSearch | ChoiceEnd


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
    #: The call the choice was cut in by its token limit, if it was.
    truncated_call: TruncatedCall | None = None
    #: The hosted searches it ran, in order.
    searches: tuple[SearchResult, ...] = ()


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
    )


@dataclass
class _Progress:
    ends: dict[int, ChoiceEnd] = field(default_factory=dict)
    tokens_seen: int = 0


@dataclass
class _SearchState:
    """One choice's hosted searches: earlier rounds, and the call that ends the current one."""

    pending: ToolCall | None = None
    text: list[str] = field(default_factory=list)
    history: list[ChatMessage] = field(default_factory=list)
    finished: list[Finished] = field(default_factory=list)
    results: list[SearchResult] = field(default_factory=list)


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


class SearchRounds(Protocol):
    """What a generation needs to serve the hosted web search (the pipeline provides it)."""

    search: HostedSearch

    async def run(self, call: ToolCall) -> SearchResult:
        """Run the search the model asked for (never raises)."""
        ...

    async def resume(self, index: int, history: tuple[ChatMessage, ...], used_tokens: int) -> GenerationStream:
        """Choice ``index`` again, with ``history`` (its call and the results) after the
        conversation, and what is left of its output limit."""
        ...


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
        search_rounds: SearchRounds | None = None,
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

        def splitter() -> CallSplitter:
            return CallSplitter(tool_plan, request.tools, bare_calls=bare_calls, parallel=request.parallel_tool_calls)

        self._new_splitter = splitter
        self._splitters = [splitter() for _ in streams]
        #: Choices we stopped because their calls were complete (a repeat, or one too many).
        self._stopped: set[int] = set()
        self._rounds = search_rounds
        self._searching = [_SearchState() for _ in streams]

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
                state = self._searching[index]
                if isinstance(event, TextDelta):
                    self._progress.tokens_seen += event.n_tokens
                    items = self._hosted_calls(index, splitter.feed(event.text, event.logprobs))
                    for item in _choice_events(index, items):
                        if isinstance(item, ChoiceDelta):
                            state.text.append(item.text)
                        yield item
                    if (splitter.wants_stop or state.pending is not None) and index not in self._stopped:
                        self._stopped.add(index)
                        self._streams[index].cancel()
                    continue
                if state.pending is not None and self._rounds is not None and event.finish_reason != "error":
                    call, state.pending = state.pending, None
                    state.finished.append(event)
                    result = await self._rounds.run(call)
                    state.results.append(result)
                    yield ChoiceSearch(index=index, search=result)
                    state.history += [
                        ChatMessage("assistant", (TextPart("".join(state.text)),), tool_calls=(call,)),
                        ChatMessage("tool", (TextPart(result.text),)),
                    ]
                    state.text = []
                    used = sum(f.usage.completion_tokens for f in state.finished)
                    stream = await self._rounds.resume(index, tuple(state.history), used)
                    self._streams[index] = stream
                    self._splitters[index] = self._new_splitter()
                    self._stopped.discard(index)
                    tasks.append(asyncio.create_task(pump(index, stream)))
                    continue
                end = self._end(index, event)
                finished = self._hosted_calls(index, splitter.finish(truncated=end.finish_reason == "length"))
                for item in _choice_events(index, finished):
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

    def _hosted_calls(self, index: int, items: list[SplitItem]) -> list[SplitItem]:
        """``items`` without a call of the hosted search, which ends the round (the pipeline
        runs it, the client never sees it as a call); past its ``max_uses`` the call just ends
        the answer."""
        rounds = self._rounds
        if rounds is None:
            return items
        out: list[SplitItem] = []
        for item in items:
            if isinstance(item, TruncatedCall) and item.name == rounds.search.name:
                continue  # a search cut by the token limit never ran: nothing to report
            if isinstance(item, ToolCall) and item.name == rounds.search.name:
                state = self._searching[index]
                if state.pending is None:
                    state.pending = item if len(state.results) < rounds.search.max_uses else None
                    if state.pending is None:
                        self._stopped.add(index)
                        self._streams[index].cancel()
                break  # nothing after the search call belongs to this answer
            out.append(item)
        return out

    async def result(self) -> GenerationOutcome:
        """Wait for every choice and return them whole."""
        texts: dict[int, list[str]] = {i: [] for i in range(self.n)}
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(self.n)}
        calls: dict[int, list[ToolCall]] = {i: [] for i in range(self.n)}
        truncated: dict[int, TruncatedCall] = {}
        searches: dict[int, list[SearchResult]] = {i: [] for i in range(self.n)}
        ends: dict[int, ChoiceEnd] = {}
        async for event in self.events():
            if isinstance(event, ChoiceDelta):
                texts[event.index].append(event.text)
                logprobs[event.index].extend(event.logprobs)
            elif isinstance(event, ChoiceToolCall):
                calls[event.index].append(event.call)
            elif isinstance(event, ChoiceTruncatedCall):
                truncated[event.index] = event.call
            elif isinstance(event, ChoiceSearch):
                searches[event.index].append(event.search)
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
                truncated_call=truncated.get(i),
                searches=tuple(searches[i]),
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
        if index in self._stopped and event.finish_reason == "cancelled":
            event = replace(event, finish_reason="stop")  # we stopped it: its calls were complete
        earlier = self._searching[index].finished
        if earlier:
            event = _after_rounds(earlier, event)
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


def _after_rounds(earlier: list[Finished], last: Finished) -> Finished:
    """A choice that ran hosted searches, as one generation: every round's tokens count (each
    read its prompt), and its first token came in the first round."""
    rounds = [*earlier, last]
    usage = Usage(
        prompt_tokens=sum(f.usage.prompt_tokens for f in rounds),
        completion_tokens=sum(f.usage.completion_tokens for f in rounds),
        cached_tokens=sum(f.usage.cached_tokens for f in rounds),
    )
    first = rounds[0].timings
    timings = replace(
        first,
        prompt_s=sum(f.timings.prompt_s for f in rounds),
        generation_s=sum(f.timings.generation_s for f in rounds),
    )
    return replace(last, usage=usage, timings=timings)


def _choice_events(index: int, items: list[SplitItem]) -> list[ChoiceDelta | ChoiceToolCall | ChoiceTruncatedCall]:
    out: list[ChoiceDelta | ChoiceToolCall | ChoiceTruncatedCall] = []
    for item in items:
        if isinstance(item, ToolCall):
            out.append(ChoiceToolCall(index=index, call=item))
        elif isinstance(item, TruncatedCall):
            out.append(ChoiceTruncatedCall(index=index, call=item))
        else:
            out.append(ChoiceDelta(index=index, text=item.text, logprobs=item.logprobs))
    return out
