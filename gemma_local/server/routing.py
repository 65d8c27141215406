"""What every generating route does with the pipeline: start, own, answer whole or streamed.

A route translates its body into a :class:`PipelineRequest` and hands it to :func:`respond`
with two encoders: one that turns the generation into the API's event stream, one that turns
the finished outcome into the API's response object. ``respond`` owns the generation until a
response takes it over: any failure in between (an encoder raising, the client leaving while
a whole answer is generated) cancels it, so no slot keeps generating for nobody.
:func:`guarded_stream` is the one place a failure inside a stream becomes the API's error
event. :class:`RequestObserver` reports the generation to the metrics and the request log.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.requests import Request

from gemma_local.engine import Finished
from gemma_local.errors import GemmaLocalError
from gemma_local.pipeline import Generation, GenerationOutcome, GenerationSummary, Pipeline, PipelineRequest
from gemma_local.server.errors import ClientDisconnectedError
from gemma_local.server.metrics import ServerMetrics
from gemma_local.server.middleware import RECORD_KEY, RequestRecord
from gemma_local.server.sse import sse_response
from gemma_local.serving import Lease

logger = logging.getLogger("gemma_local.server")

T = TypeVar("T")

#: Turns a running generation into the bytes of the API's event stream.
StreamEncoder = Callable[[Generation], AsyncIterator[bytes]]
#: Turns a finished generation into the API's response object (directly, or awaited).
WholeEncoder = Callable[[Generation, GenerationOutcome], BaseModel | Awaitable[BaseModel]]


class RequestObserver:
    """The server's :class:`~gemma_local.pipeline.GenerationObserver`: metrics, and the
    request's log record (when the request-log middleware gave it one)."""

    def __init__(self, metrics: ServerMetrics, record: RequestRecord | None, model_id: str) -> None:
        self._metrics = metrics
        self._record = record
        self._model_id = model_id

    def request_started(self, request: PipelineRequest) -> None:
        if self._record is not None:
            self._record.request_id = request.request_id
            self._record.model = request.model

    def choice_finished(self, endpoint: str, event: Finished) -> None:
        self._metrics.observe_generation(endpoint, self._model_id, event.finish_reason, event.usage, event.timings)

    def generation_over(self, summary: GenerationSummary) -> None:
        record = self._record
        if record is None:
            return
        record.finish = summary.finish
        record.completion_tokens = max(record.completion_tokens, summary.completion_tokens)
        if summary.usage is None:
            return
        record.prompt_tokens = summary.usage.prompt_tokens
        record.cached_tokens = summary.usage.cached_tokens
        record.time_to_first_token_s = summary.time_to_first_token_s
        record.tokens_per_s = summary.tokens_per_s


def request_record(request: Request) -> RequestRecord | None:
    """The log record the request-log middleware attached to this request."""
    return request.scope.get("state", {}).get(RECORD_KEY)


async def start(request: Request, pipeline: Pipeline, pipeline_request: PipelineRequest) -> Generation:
    """Start ``pipeline_request``, reported to the app's metrics and this request's log line."""
    record = request_record(request)
    served = record.served_model if record is not None and record.served_model else pipeline.engine.model_id
    observer = RequestObserver(request.app.state.runtime.metrics, record, served)
    return await pipeline.start(pipeline_request, observer)


async def respond(
    request: Request,
    lease: Lease,
    pipeline_request: PipelineRequest,
    *,
    stream: StreamEncoder | None,
    whole: WholeEncoder,
) -> Response:
    """Run a generating request on its model lease and answer it, streamed (``stream`` given) or whole.

    The lease is given back when the generation is over: after the whole answer, or when the
    event stream ends (the client leaving included), so the model is never unloaded under it.

    Raises:
        GemmaLocalError: the request was refused before anything was sent (the API's error
            envelope and status), or the client left before a whole answer was ready.
    """
    try:
        generation = await start(request, lease.pipeline, pipeline_request)
    except BaseException:
        lease.release()
        raise

    def finished() -> None:
        generation.cancel()
        lease.release()

    try:
        if stream is not None:
            # The response owns it from here: it cancels the generation and gives the model
            # back when it ends, even when the client leaves before the first event.
            return sse_response(stream(generation), on_close=finished)
        outcome = await until_disconnected(request, generation.result())
        body = whole(generation, outcome)
        if inspect.isawaitable(body):
            body = await body
        lease.release()
        return JSONResponse(body.model_dump(mode="json"))
    except BaseException:
        finished()
        raise


async def guarded_stream(
    events: AsyncIterator[bytes], on_error: Callable[[BaseException], bytes], stream_id: str
) -> AsyncIterator[bytes]:
    """``events``; a failure after the stream has begun ends it with ``on_error``'s event.

    An expected failure (an engine error, shutdown) is the API's error event; anything else is
    a bug, logged with its traceback, and still ends the stream in a way the SDKs report.
    """
    async with contextlib.aclosing(events) as iterator:
        try:
            async for chunk in iterator:
                yield chunk
        except Exception as e:
            if not isinstance(e, GemmaLocalError):
                logger.exception("error while streaming %s", stream_id)
            yield on_error(e)


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
