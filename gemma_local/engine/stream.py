"""GenerationStream: the handle a caller gets back from ``Engine.submit``.

Iterate it (``for`` or ``async for``) to receive events; call :meth:`cancel` to stop it. The
scheduler thread pushes events in; consumers on any thread or event loop pull them out.
A stream that is abandoned before its last event (a client disconnect, a ``break``) cancels
its generation when the iterator is closed: at once with ``contextlib.aclosing`` or an
explicit :meth:`GenerationStream.cancel`, else when the event loop finalises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from gemma_local.engine.types import Event, Finished, GenerationResult, TextDelta, TokenLogprob
from gemma_local.errors import GenerationError


class GenerationStream:
    def __init__(self, request_id: str, on_cancel: Callable[[], None], prompt_tokens: int = 0) -> None:
        self.request_id = request_id
        #: Tokens in the prompt (image soft tokens included), known before the first event.
        self.prompt_tokens = prompt_tokens
        self._on_cancel = on_cancel
        self._lock = threading.Lock()
        self._sync_queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_queue: asyncio.Queue[Event] | None = None
        self._cancel_requested = threading.Event()
        self._finished: Finished | None = None
        self._consumed = False

    # --- producer side (scheduler thread) -----------------------------------------------------

    def _push(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, Finished):
                self._finished = event
            if self._loop is not None and self._async_queue is not None:
                # RuntimeError: the consumer's loop is gone; nobody is listening any more.
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._async_queue.put_nowait, event)
            else:
                self._sync_queue.put(event)

    # --- consumer side --------------------------------------------------------------------

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested.is_set()

    @property
    def finished(self) -> Finished | None:
        return self._finished

    def cancel(self) -> None:
        """Stop generating; the stream ends with ``finish_reason='cancelled'``. Idempotent."""
        if self._finished is None and not self._cancel_requested.is_set():
            self._cancel_requested.set()
            self._on_cancel()

    def _claim(self) -> None:
        if self._consumed:
            raise RuntimeError("A GenerationStream can be iterated only once.")
        self._consumed = True

    def __iter__(self) -> Iterator[Event]:
        self._claim()
        try:
            while True:
                event = self._sync_queue.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if self._finished is None:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[Event]:
        self._claim()
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._async_queue = asyncio.Queue()
            while True:
                try:
                    self._async_queue.put_nowait(self._sync_queue.get_nowait())
                except queue.Empty:
                    break
        try:
            while True:
                event = await self._async_queue.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if self._finished is None:
                self.cancel()

    def result(self) -> GenerationResult:
        """Block until done and return the whole generation.

        Raises:
            GenerationError: the engine failed while generating this request.
        """
        return collect(iter(self))


def collect(events: Iterator[Event]) -> GenerationResult:
    texts: list[str] = []
    logprobs: list[TokenLogprob] = []
    for event in events:
        if isinstance(event, TextDelta):
            texts.append(event.text)
            logprobs.extend(event.logprobs)
        elif isinstance(event, Finished):
            if event.finish_reason == "error":
                err = event.error or GenerationError("Generation failed.")
                raise err
            return GenerationResult(
                text="".join(texts),
                finish_reason=event.finish_reason,
                usage=event.usage,
                timings=event.timings,
                stop_sequence=event.stop_sequence,
                logprobs=tuple(logprobs),
            )
    raise GenerationError("The generation stream ended without a final event.")
