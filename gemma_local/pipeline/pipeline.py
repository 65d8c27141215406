"""The request path every surface shares: common request → engine → common events.

The HTTP APIs (Chat Completions, Responses, Anthropic Messages) and the CLI only translate::

    generation = await pipeline.start(PipelineRequest(...), observer)
    async for event in generation.events():      # ChoiceDelta ... ChoiceEnd per choice
        ...
    outcome = await generation.result()          # or all at once

``start`` checks the model id and the request limits, loads the images the request names
(checking once that the model can read them), applies the search hook, plans tools and
structured output, submits ``n`` generations (raising typed errors *before* anything is sent
back) and returns a :class:`Generation`. Nothing here knows any API's wire format or HTTP.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from typing import Protocol

import anyio.to_thread

from gemma_local.engine import ChatMessage, GenerationRequest, GenerationStream, ModelInfo, SamplingParams
from gemma_local.engine.scheduler import SchedulerStats
from gemma_local.engine.tools import ToolPlan
from gemma_local.engine.types import ToolCall
from gemma_local.errors import GemmaLocalError
from gemma_local.images import ImagePolicy
from gemma_local.pipeline.forcing import ToolForcing
from gemma_local.pipeline.generation import Generation, GenerationObserver
from gemma_local.pipeline.grounding import aground
from gemma_local.pipeline.hosted_search import HostedSearch, SearchResult, run_hosted_search
from gemma_local.pipeline.images import check_vision, load_images
from gemma_local.pipeline.model_ids import ServedModels
from gemma_local.pipeline.request import PipelineRequest, RequestLimits
from gemma_local.pipeline.tooling import plan_generation
from gemma_local.search import ProviderChain, default_chain

logger = logging.getLogger("gemma_local.pipeline")


class EngineLike(Protocol):
    """What the pipeline needs from an engine (``gemma_local.engine.Engine`` provides it)."""

    model_id: str
    default_seed: int | None

    @property
    def info(self) -> ModelInfo: ...

    def submit(self, request: GenerationRequest) -> GenerationStream: ...

    def prompt_tokens(self, request: GenerationRequest) -> list[int]: ...

    def stats(self) -> SchedulerStats: ...

    def cancel_all(self) -> int: ...

    def close(self) -> None: ...


class Pipeline:
    """The API-independent request path over one loaded engine.

    Args:
        engine: the loaded engine.
        limits: the output cap and the other per-request limits.
        image_policy: how images named by URL or base64 are loaded (sizes, remote fetching).
        search_chain: the search hook's providers (default: built from settings on first use).
        models: the ids it answers to (default: the engine's own, its family's and the hosted id).
        forcing: a tool whose call is forced at the start of each user turn (``serve
            --force-tool``; default: none).
    """

    def __init__(
        self,
        engine: EngineLike,
        limits: RequestLimits | None = None,
        image_policy: ImagePolicy | None = None,
        search_chain: ProviderChain | None = None,
        models: ServedModels | None = None,
        forcing: ToolForcing | None = None,
    ) -> None:
        self.engine = engine
        self.limits = limits or RequestLimits(default_seed=engine.default_seed)
        self.forcing = forcing or ToolForcing()
        self.image_policy = image_policy or ImagePolicy()
        self._search_chain = search_chain
        self.info = engine.info
        self.models = models or ServedModels(engine.model_id, self.info.metadata)

    def check_model(self, requested: str) -> str:
        """``requested`` if the loaded model answers to it.

        Raises:
            ModelNotFoundError: it does not (HTTP 404 ``model_not_found``).
        """
        return self.models.check(requested)

    async def start(self, request: PipelineRequest, observer: GenerationObserver | None = None) -> Generation:
        """Check the request, submit its ``n`` choices, and return them running.

        The caller owns the returned generation: consume it, or :meth:`Generation.cancel` it.

        Raises:
            ModelNotFoundError: the model id is not served here (404).
            ChatFormatError, ContextOverflowError, InvalidRequestError, ModelCapabilityError,
            ImageError, UnsupportedSchemaError (a tool's or the output format's schema): 400.
            ServerBusyError: the queue is full (429); no choice is left running.
            EngineClosedError: the engine is shutting down (503).
        """
        request = await self._prepare(request)
        if observer is not None:
            observer.request_started(request)
        asked_stops = request.generation.stop
        hosted = request.hosted_search if request.tool_choice != "none" else None
        if hosted is not None:
            request = replace(request, tools=(*request.tools, hosted.spec()))
        unplanned = request
        request, plan = self._plan(request)
        grounding = None
        if request.web_search:
            # Measured with the tool instructions in, and the room kept for the answer is the
            # output limit this request really gets.
            generation = request.generation.model_copy(
                update={"max_tokens": self.limits.output_tokens(request.generation.max_tokens)}
            )
            grounding = await aground(
                generation, self.engine, self.search_chain(), disable_formatting=request.disable_formatting
            )
            request = replace(request, generation=grounding.request)
        streams = await self._submit(self._choice_requests(request))
        own_stops = tuple(s for s in plan.stop if s not in asked_stops) if plan is not None else ()
        rounds = None
        if hosted is not None:
            # After a search the answer goes on unforced: the auto plan's (lazy) call grammar.
            auto, _ = self._plan(replace(unplanned, tool_choice="auto"))
            rounds = _SearchRounds(self, hosted, request, auto.generation.sampling)
        return Generation(request, streams, observer, grounding, plan, own_stops, rounds)

    async def count_tokens(self, request: PipelineRequest) -> int:
        """Prompt tokens of ``request`` exactly as :meth:`start` would submit it (images included).

        Raises:
            ModelNotFoundError, ChatFormatError, ModelCapabilityError, ImageError,
            UnsupportedSchemaError: as :meth:`start`.
        """
        request, _ = self._plan(await self._prepare(request))
        generation = self._choice_requests(request)[0]
        return len(await anyio.to_thread.run_sync(self.engine.prompt_tokens, generation))

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

    async def _prepare(self, request: PipelineRequest) -> PipelineRequest:
        """The model and limits checked, and the images loaded (vision checked once, first)."""
        self.check_model(request.model)
        self.limits.check(request)
        messages = request.generation.messages
        check_vision(messages, vision=self.info.vision, model_id=self.engine.model_id)
        loaded = await load_images(messages, self.image_policy)
        if loaded is messages:
            return request
        return replace(request, generation=request.generation.model_copy(update={"messages": loaded}))

    def _plan(self, request: PipelineRequest) -> tuple[PipelineRequest, ToolPlan | None]:
        answer_stops = self.forcing.answer_stops(request)
        request = self.forcing.apply(request)
        generation, plan = plan_generation(
            request.generation,
            request.tools,
            request.tool_choice,
            request.output_format,
            parallel=request.parallel_tool_calls,
        )
        if answer_stops and plan is not None:
            # The policy's own stops: reported as a plain stop, like the plan's.
            generation = generation.model_copy(update={"stop": (*generation.stop, *answer_stops)})
            plan = replace(plan, stop=(*plan.stop, *answer_stops))
        return replace(request, generation=generation), plan

    def _choice_requests(self, request: PipelineRequest) -> list[GenerationRequest]:
        base = request.generation
        max_tokens = self.limits.output_tokens(base.max_tokens)
        seed = base.sampling.seed if base.sampling.seed is not None else self.limits.default_seed
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

    async def _submit(self, requests: list[GenerationRequest]) -> list[GenerationStream]:
        """Submit every choice (tokenizing a long prompt takes a while: off the event loop).

        The caller may be cancelled meanwhile (its client left) while the thread goes on:
        whatever it submits after that is cancelled at once instead of generating for nobody.
        """
        streams: list[GenerationStream] = []
        lock = threading.Lock()
        abandoned = False

        def submit_all() -> None:
            for r in requests:
                stream = self.engine.submit(r)
                with lock:
                    streams.append(stream)
                    if abandoned:
                        stream.cancel()
                        return

        try:
            await anyio.to_thread.run_sync(submit_all)
        except BaseException:
            with lock:
                abandoned = True
                for stream in streams:
                    stream.cancel()
            raise
        return streams


class _SearchRounds:
    """The hosted web search of one request: runs the model's searches and resumes its choices.

    A choice resumes with its conversation, its search call and the results appended (the
    prompt only grows, so the prefix cache serves all of it but the results) and the
    ``auto`` plan's sampling: a forced search must not force another one. The tool
    instructions are the same whatever the choice, so only the grammar changes.
    """

    def __init__(
        self, pipeline: Pipeline, search: HostedSearch, request: PipelineRequest, sampling: SamplingParams
    ) -> None:
        self.search = search
        self._pipeline = pipeline
        self._request = request
        self._sampling = sampling

    async def run(self, call: ToolCall) -> SearchResult:
        query = call.arguments.get("query")
        query = query if isinstance(query, str) else json.dumps(call.arguments, ensure_ascii=False)
        pipeline = self._pipeline
        engine = pipeline.engine

        def count(text: str) -> int:
            return len(engine.model.tokenize(text, special=False))  # type: ignore[attr-defined]

        return await anyio.to_thread.run_sync(
            run_hosted_search, call.id, query, self.search, pipeline.search_chain(), count
        )

    async def resume(self, index: int, history: tuple[ChatMessage, ...], used_tokens: int) -> GenerationStream:
        base = self._request
        generation = base.generation.model_copy(
            update={"messages": (*base.generation.messages, *history), "sampling": self._sampling}
        )
        choice = self._pipeline._choice_requests(replace(base, generation=generation))[index]
        left = max(1, (choice.max_tokens or 1) - used_tokens)
        [stream] = await self._pipeline._submit([choice.model_copy(update={"max_tokens": left})])
        return stream
