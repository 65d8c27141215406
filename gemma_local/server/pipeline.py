"""The request path every API shares: common request → engine → common events → results.

An API module (Chat Completions, Responses, Anthropic Messages) only translates::

    generation = await pipeline.start(PipelineRequest(...), record=request_record(http_request))
    async for event in generation.events():      # streaming: ChoiceDelta ... ChoiceEnd per choice
        ...
    outcome = await until_disconnected(http_request, generation.result())   # or all at once

``start`` checks the model id, applies the server's output cap, submits ``n`` generations
(raising typed errors *before* any response is sent) and returns a :class:`Generation`. The
generation records tokens, time to first token and speed in the request log and the metrics.
Nothing here knows any API's wire format.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, TypeVar

import anyio.to_thread
from starlette.requests import Request

from gemma_local.engine import (
    Finished,
    GenerationRequest,
    GenerationStream,
    ImagePart,
    ModelInfo,
    TextDelta,
    Timings,
    Usage,
)
from gemma_local.engine.scheduler import SchedulerStats
from gemma_local.engine.tools import NamedToolChoice as NamedToolChoice  # re-exported for the API modules
from gemma_local.engine.tools import ToolChoice, ToolPlan, ToolSpec
from gemma_local.engine.types import TokenLogprob, ToolCall
from gemma_local.errors import EngineClosedError, GemmaLocalError, GenerationError, ModelCapabilityError
from gemma_local.grounding import Grounding, aground
from gemma_local.images import ImagePolicy, aimage_from_base64, aimage_from_url_or_data
from gemma_local.search import ProviderChain, default_chain
from gemma_local.server.errors import ClientDisconnectedError
from gemma_local.server.metrics import ServerMetrics
from gemma_local.server.middleware import RECORD_KEY, RequestRecord
from gemma_local.server.model_ids import ServedModels
from gemma_local.server.tooling import CallSplitter, OutputFormat, TextPiece, plan_generation
from gemma_local.settings import ServerSettings

logger = logging.getLogger("gemma_local.server")

#: The hosted API's default when a request gives no output limit.
DEFAULT_MAX_TOKENS = 4096

T = TypeVar("T")


class EngineLike(Protocol):
    """What the server needs from an engine (``gemma_local.engine.Engine`` provides it)."""

    model_id: str
    default_seed: int | None

    @property
    def info(self) -> ModelInfo: ...

    def submit(self, request: GenerationRequest) -> GenerationStream: ...

    def prompt_tokens(self, request: GenerationRequest) -> list[int]: ...

    def stats(self) -> SchedulerStats: ...

    def cancel_all(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PipelineRequest:
    """One API request, translated: the conversation and options, and how many choices.

    Args:
        endpoint: the route path (``/v1/chat/completions``), for metrics labels.
        request_id: the API's own id for this request (``chatcmpl-…``, ``resp_…``, ``msg_…``).
        model: the model id the client sent (checked against the loaded model).
        generation: messages, sampling, stop sequences, logprobs; ``max_tokens`` is what the
            client asked for (None: the hosted default, 4096), capped by the server.
        n: independent choices for the same prompt (seeds ``seed``, ``seed+1``, …).
        web_search: ``web_search_linkup``: ground the answer in search results (see ``grounding``).
        disable_formatting: no "Sources" footer on web-search answers.
        tools: functions the model may call; ``tool_choice`` says whether it must, and
            ``parallel_tool_calls`` whether one answer may make several calls.
        output_format: structured output (None or type ``text``: free text).
    """

    endpoint: str
    request_id: str
    model: str
    generation: GenerationRequest
    n: int = 1
    web_search: bool = False
    disable_formatting: bool = False
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None


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


class Generation:
    """The running choices of one request. Consume it once, with :meth:`events` or :meth:`result`."""

    def __init__(
        self,
        request: PipelineRequest,
        streams: list[GenerationStream],
        metrics: ServerMetrics,
        record: RequestRecord | None,
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
        self._metrics = metrics
        self._record = record
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
            self._finalize_record()

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
        self._metrics.observe_generation(self._endpoint, event.finish_reason, event.usage, event.timings)
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

    def _finalize_record(self) -> None:
        record = self._record
        if record is None:
            return
        ends = list(self._progress.ends.values())
        if len(ends) < self.n:
            record.finish = "cancelled" if not ends else "partial"
            record.completion_tokens = max(record.completion_tokens, self._progress.tokens_seen)
        else:
            reasons = sorted({e.finish_reason for e in ends})
            record.finish = ",".join(reasons)
        if not ends:
            return
        usage = combine_usage([e.usage for e in ends])
        record.prompt_tokens = usage.prompt_tokens
        record.cached_tokens = usage.cached_tokens
        record.completion_tokens = max(usage.completion_tokens, self._progress.tokens_seen)
        ttfts = [e.timings.time_to_first_token_s for e in ends if e.timings.time_to_first_token_s > 0]
        record.time_to_first_token_s = min(ttfts) if ttfts else None
        generation_s = max(e.timings.generation_s for e in ends)
        if usage.completion_tokens > 1 and generation_s > 0:
            record.tokens_per_s = usage.completion_tokens / generation_s


def _choice_events(index: int, items: list[TextPiece | ToolCall]) -> list[ChoiceDelta | ChoiceToolCall]:
    return [
        ChoiceToolCall(index=index, call=item)
        if isinstance(item, ToolCall)
        else ChoiceDelta(index=index, text=item.text, logprobs=item.logprobs)
        for item in items
    ]


class Pipeline:
    """The API-independent request path over one loaded engine.

    Args:
        engine: the loaded engine.
        metrics: where finished generations are counted.
        settings: the output cap (``max_output_tokens``) and the image limits are read.
    """

    def __init__(
        self,
        engine: EngineLike,
        metrics: ServerMetrics,
        settings: ServerSettings,
        search_chain: ProviderChain | None = None,
    ) -> None:
        self.engine = engine
        self._search_chain = search_chain
        self.metrics = metrics
        self.max_output_tokens = settings.max_output_tokens
        self.image_policy = ImagePolicy.from_settings(settings)
        info = engine.info
        self.info = info
        self.models = ServedModels(engine.model_id, info.metadata)

    def check_model(self, requested: str) -> str:
        """``requested`` if the loaded model answers to it.

        Raises:
            ModelNotFoundError: it does not (HTTP 404 ``model_not_found``).
        """
        return self.models.check(requested)

    def require_vision(self) -> None:
        """Call before decoding images: a text-only model is refused without fetching anything.

        Raises:
            ModelCapabilityError: the loaded model has no vision projector (HTTP 400).
        """
        if not self.info.vision:
            raise ModelCapabilityError(
                f"The loaded model '{self.engine.model_id}' cannot read images (no vision projector). "
                "Serve a Gemma 3 4B, 12B or 27B model with its mmproj file.",
                param="messages",
            )

    async def image_from_url(self, url: str, *, param: str) -> ImagePart:
        """An image given as a ``data:`` URI or an http(s) URL (fetched only if the settings allow).

        Raises:
            ModelCapabilityError: the loaded model cannot read images (checked first: no fetch).
            ImageError: the image is unusable, too large, or its URL may not be fetched (400).
        """
        self.require_vision()
        return await aimage_from_url_or_data(url, self.image_policy, param=param)

    async def image_from_base64(self, data: str, media_type: str | None, *, param: str) -> ImagePart:
        """An image given as base64 bytes (Anthropic's ``source.type: base64``).

        Raises:
            ModelCapabilityError: the loaded model cannot read images.
            ImageError: the data is not a usable image (400).
        """
        self.require_vision()
        return await aimage_from_base64(data, media_type, self.image_policy, param=param)

    def output_limit(self, requested: int | None) -> int:
        """Output tokens per choice: what was asked (default 4096), at most the server's cap."""
        return min(requested or DEFAULT_MAX_TOKENS, self.max_output_tokens)

    async def start(self, request: PipelineRequest, record: RequestRecord | None = None) -> Generation:
        """Check the model, submit ``n`` generations, and return them running.

        Raises:
            ModelNotFoundError: the model id is not served here (404).
            ChatFormatError, ContextOverflowError, InvalidRequestError, ModelCapabilityError,
            UnsupportedSchemaError (a tool's or the output format's schema): 400.
            ServerBusyError: the queue is full (429); no choice is left running.
            EngineClosedError: the engine is shutting down (503).
        """
        self.check_model(request.model)
        if record is not None:
            record.request_id = request.request_id
            record.model = request.model
        if not self.info.vision and any(
            isinstance(part, ImagePart) for message in request.generation.messages for part in message.content
        ):
            self.require_vision()
        grounding = None
        if request.web_search:
            grounding = await aground(
                request.generation, self.engine, self.search_chain(), disable_formatting=request.disable_formatting
            )
            request = replace(request, generation=grounding.request)
        asked_stops = request.generation.stop
        request, plan = self._plan(request)
        requests = self._choice_requests(request)
        # Tokenizing a long prompt takes a while: keep it off the event loop.
        streams = await anyio.to_thread.run_sync(self._submit_all, requests)
        own_stops = tuple(s for s in plan.stop if s not in asked_stops) if plan is not None else ()
        return Generation(request, streams, self.metrics, record, grounding, plan, own_stops)

    def search_chain(self) -> ProviderChain:
        """The search providers, built on first use from ``GEMMA_LOCAL_*`` settings unless given.

        A misconfiguration (an unknown provider name) leaves an empty chain: the hook then
        answers without sources and says why, as it does for any search trouble.
        """
        if self._search_chain is None:
            try:
                self._search_chain = default_chain()
            except GemmaLocalError as e:
                logger.warning("search hook disabled: %s", e.message)
                self._search_chain = ProviderChain([])
        return self._search_chain

    async def count_tokens(self, request: PipelineRequest) -> int:
        """Prompt tokens of ``request`` exactly as :meth:`start` would submit it (images included).

        Raises:
            ModelNotFoundError, ChatFormatError, ModelCapabilityError, UnsupportedSchemaError: as
                :meth:`start`.
        """
        self.check_model(request.model)
        request, _ = self._plan(request)
        generation = self._choice_requests(request)[0]
        return len(await anyio.to_thread.run_sync(self.engine.prompt_tokens, generation))

    def _plan(self, request: PipelineRequest) -> tuple[PipelineRequest, ToolPlan | None]:
        generation, plan = plan_generation(
            request.generation,
            request.tools,
            request.tool_choice,
            request.output_format,
            parallel=request.parallel_tool_calls,
        )
        return replace(request, generation=generation), plan

    def _choice_requests(self, request: PipelineRequest) -> list[GenerationRequest]:
        base = request.generation
        max_tokens = self.output_limit(base.max_tokens)
        seed = base.sampling.seed if base.sampling.seed is not None else self.engine.default_seed
        out = []
        for i in range(request.n):
            sampling = base.sampling
            if request.n > 1 and seed is not None:
                # Distinct but reproducible choices.
                sampling = sampling.model_copy(update={"seed": seed + i})
            out.append(
                base.model_copy(
                    update={"max_tokens": max_tokens, "sampling": sampling, "request_id": f"{request.request_id}/{i}"}
                )
            )
        return out

    def _submit_all(self, requests: list[GenerationRequest]) -> list[GenerationStream]:
        streams: list[GenerationStream] = []
        try:
            for r in requests:
                streams.append(self.engine.submit(r))
        except BaseException:
            for stream in streams:
                stream.cancel()
            raise
        return streams


def request_record(request: Request) -> RequestRecord | None:
    """The log record the request-log middleware attached to this request."""
    return request.scope.get("state", {}).get(RECORD_KEY)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, but cancel it as soon as the client disconnects.

    For non-streaming answers (streaming responses are cancelled by Starlette itself).

    Raises:
        ClientDisconnectedError: the client left first; ``work`` was cancelled.
    """
    work_task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watch_task = asyncio.create_task(wait_disconnect())
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        work_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work_task
        raise ClientDisconnectedError()
    finally:
        watch_task.cancel()
        work_task.cancel()
