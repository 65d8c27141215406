"""The Responses API's output: response objects and their event streams, from pipeline results.

``finish_response`` builds a whole response; ``stream_response`` sends the event sequence the
OpenAI SDK's ``responses.stream()`` helper checks (``response.created`` first, each output item
added before its deltas and done after them, ``sequence_number`` 0, 1, 2, ...);
``replay_events`` gives a stored response's events again (``GET /v1/responses/{id}?stream=true``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from gemma_local.engine import Usage
from gemma_local.engine.types import TokenLogprob as EngineLogprob
from gemma_local.errors import GemmaLocalError
from gemma_local.pipeline import (
    ChoiceDelta,
    ChoiceEnd,
    ChoiceResult,
    ChoiceSearch,
    ChoiceToolCall,
    ChoiceTruncatedCall,
    Generation,
    Grounding,
    SearchResult,
)
from gemma_local.pipeline.conversation import new_id, sampling_params
from gemma_local.server.errors import describe
from gemma_local.server.openai_responses_schemas import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    CustomInputDeltaEvent,
    CustomInputDoneEvent,
    CustomToolCall,
    FormatText,
    FunctionCall,
    IncompleteDetails,
    InputTokensDetails,
    Logprob,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    Response,
    ResponseCreateRequest,
    ResponseError,
    ResponseLifecycleEvent,
    ResponseUsage,
    StreamEvent,
    TextConfigOut,
    TextDeltaEvent,
    TextDoneEvent,
    TopLogprob,
    WebSearchAction,
    WebSearchCall,
    WebSearchCallEvent,
    WebSearchSource,
)
from gemma_local.server.openai_responses_tools import ResponsesTools
from gemma_local.server.sse import sse_event

logger = logging.getLogger("gemma_local.server")


def _search_metadata(grounding: Grounding | None) -> dict[str, str]:
    """What the search hook did, in ``metadata`` (whose values must be strings of ≤ 512 chars)."""
    if grounding is None:
        return {}
    meta = grounding.metadata
    out = {
        "search_provider": str(meta.get("provider") or "none"),
        "search_sources_found": str(meta.get("sources_found", 0)),
        "search_sources_used": str(meta.get("sources_used", 0)),
    }
    if meta.get("note"):
        out["search_note"] = str(meta["note"])[:512]
    return out


def _annotations(text: str, grounding: Grounding | None, searches: Sequence[SearchResult] = ()) -> list[dict[str, Any]]:
    """``url_citation`` annotations for each [n] in the answer that cites a source it was given
    (by the search hook, or by the latest hosted search it ran)."""
    out = []
    if grounding is not None:
        answer = text.removesuffix(grounding.footer) if grounding.footer else text
        out += [c.as_url_citation() for c in grounding.citations(answer)]
    if searches:
        out += [c.as_url_citation() for c in searches[-1].cite(text)]
    return out


def _web_search_call(search: SearchResult, status: Literal["in_progress", "completed"]) -> WebSearchCall:
    sources = [WebSearchSource(url=s.url) for s in search.sources] if status == "completed" else None
    return WebSearchCall(
        id="ws_" + search.call_id.split("_", 1)[-1],
        status=status,
        action=WebSearchAction(query=search.query, sources=sources),
    )


def _search_events(emit: _Events, search: SearchResult, index: int) -> list[bytes]:
    """A hosted search's item: added, in progress, searching, completed, done."""
    added = _web_search_call(search, "in_progress")
    where = {"item_id": added.id, "output_index": index}
    return [
        emit(OutputItemEvent, type="response.output_item.added", output_index=index, item=added),
        *(
            emit(WebSearchCallEvent, type=f"response.web_search_call.{phase}", **where)
            for phase in ("in_progress", "searching", "completed")
        ),
        emit(
            OutputItemEvent,
            type="response.output_item.done",
            output_index=index,
            item=_web_search_call(search, "completed"),
        ),
    ]


def response_base(body: ResponseCreateRequest, generation: Generation) -> Response:
    """The response object before any output: what the request asked for, echoed back."""
    fmt = body.text.format if body.text and body.text.format else FormatText(type="text")
    defaults = sampling_params()
    return Response(
        id=generation.id,
        created_at=generation.created,
        status="in_progress",
        model=generation.model,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        metadata={**(body.metadata or {}), **_search_metadata(generation.grounding)},
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        store=body.store is not False,
        temperature=body.temperature if body.temperature is not None else defaults.temperature,
        top_p=body.top_p if body.top_p is not None else defaults.top_p,
        text=TextConfigOut(format=fmt),
        tool_choice=body.tool_choice or "auto",
        tools=body.tools or [],
        top_logprobs=body.top_logprobs,
        truncation=body.truncation or "disabled",
        user=body.user,
    )


def _logprobs(items: tuple[EngineLogprob, ...]) -> list[Logprob]:
    return [
        Logprob(
            token=lp.token,
            bytes=list(lp.bytes),
            logprob=lp.logprob,
            top_logprobs=[TopLogprob(token=t, bytes=list(b), logprob=p) for t, p, b in lp.top],
        )
        for lp in items
    ]


def _usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=usage.cached_tokens),
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _finished(base: Response, output: list[OutputItem], finish_reason: str, usage: Usage) -> Response:
    incomplete = finish_reason == "length"
    return base.model_copy(
        update={
            "status": "incomplete" if incomplete else "completed",
            "completed_at": int(time.time()),
            "output": output,
            "incomplete_details": IncompleteDetails(reason="max_output_tokens") if incomplete else None,
            "usage": _usage(usage),
        }
    )


def finish_response(
    base: Response,
    choice: ChoiceResult,
    want_logprobs: bool,
    grounding: Grounding | None = None,
    tools: ResponsesTools | None = None,
) -> Response:
    """The complete response object for a finished choice: its hosted searches, its message,
    then its tool calls."""
    tools = tools or ResponsesTools()
    output: list[OutputItem] = [_web_search_call(search, "completed") for search in choice.searches]
    if choice.text or not (choice.tool_calls or choice.truncated_call):
        part = OutputText(
            text=choice.text,
            logprobs=_logprobs(choice.logprobs) if want_logprobs else [],
            annotations=_annotations(choice.text, grounding, choice.searches),
        )
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        output.append(OutputMessage(id=new_id("msg_"), status=status, content=[part]))
    output.extend(tools.item(call, "completed") for call in choice.tool_calls)
    if choice.truncated_call is not None:
        # Cut by the token limit: an incomplete call with its arguments so far, never text.
        output.append(tools.item(choice.truncated_call, "incomplete"))
    return _finished(base, output, choice.finish_reason, choice.usage)


class _Events:
    """Numbers the events of one stream (``sequence_number`` counts 0, 1, 2, ...)."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, event: type[StreamEvent], **fields: Any) -> bytes:
        payload = event(sequence_number=self.sequence, **fields)
        self.sequence += 1
        return sse_event(payload.type, payload)


class _MessageStream:
    """The events of one output message: opened at its first text, closed before anything after it."""

    def __init__(
        self,
        emit: _Events,
        output_index: int,
        want_logprobs: bool,
        item_id: str | None = None,
        grounding: Grounding | None = None,
        searches: Sequence[SearchResult] = (),
    ) -> None:
        self.grounding = grounding
        self.searches = searches
        self.emit = emit
        self.index = output_index
        self.id = item_id or new_id("msg_")
        self.text: list[str] = []
        self.logprobs: list[Logprob] = []
        self.want_logprobs = want_logprobs

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index, "content_index": 0}

    def open(self) -> list[bytes]:
        item = OutputMessage(id=self.id, status="in_progress", content=[])
        return [
            self.emit(OutputItemEvent, type="response.output_item.added", output_index=self.index, item=item),
            self.emit(ContentPartEvent, type="response.content_part.added", **self._where(), part=OutputText(text="")),
        ]

    def delta(self, event: ChoiceDelta) -> bytes:
        logprobs = _logprobs(event.logprobs) if self.want_logprobs else []
        self.text.append(event.text)
        self.logprobs.extend(logprobs)
        return self.emit(TextDeltaEvent, **self._where(), delta=event.text, logprobs=logprobs)

    def close(self, status: Literal["completed", "incomplete"]) -> tuple[OutputMessage, list[bytes]]:
        text = "".join(self.text)
        part = OutputText(
            text=text, logprobs=self.logprobs, annotations=_annotations(text, self.grounding, self.searches)
        )
        item = OutputMessage(id=self.id, status=status, content=[part])
        events = [
            self.emit(TextDoneEvent, **self._where(), text=part.text, logprobs=part.logprobs),
            self.emit(ContentPartEvent, type="response.content_part.done", **self._where(), part=part),
            self.emit(OutputItemEvent, type="response.output_item.done", output_index=self.index, item=item),
        ]
        return item, events


def _call_events(emit: _Events, done: FunctionCall | CustomToolCall, index: int) -> list[bytes]:
    """A tool call's item: added (empty), its arguments (or custom input) as one delta, done."""
    where = {"item_id": done.id, "output_index": index}
    if isinstance(done, CustomToolCall):
        added: FunctionCall | CustomToolCall = done.model_copy(update={"input": "", "status": "in_progress"})
        body = [
            emit(CustomInputDeltaEvent, **where, delta=done.input),
            emit(CustomInputDoneEvent, **where, input=done.input),
        ]
    else:
        # The added item carries empty arguments: the SDK's helper appends every delta to them.
        added = done.model_copy(update={"arguments": "", "status": "in_progress"})
        body = [
            emit(ArgumentsDeltaEvent, **where, delta=done.arguments),
            emit(ArgumentsDoneEvent, **where, arguments=done.arguments),
        ]
    return [
        emit(OutputItemEvent, type="response.output_item.added", output_index=index, item=added),
        *body,
        emit(OutputItemEvent, type="response.output_item.done", output_index=index, item=done),
    ]


def replay_events(response: Response) -> list[bytes]:
    """The event stream a stored response would have had (each message's text as one delta)."""
    emit = _Events()
    start = response.model_copy(
        update={"status": "in_progress", "output": [], "usage": None, "completed_at": None, "incomplete_details": None}
    )
    out = [
        emit(ResponseLifecycleEvent, type="response.created", response=start),
        emit(ResponseLifecycleEvent, type="response.in_progress", response=start),
    ]
    for index, item in enumerate(response.output):
        if isinstance(item, FunctionCall | CustomToolCall):
            out += _call_events(emit, item, index)
            continue
        if isinstance(item, WebSearchCall):
            where = {"item_id": item.id, "output_index": index}
            added = item.model_copy(update={"status": "in_progress"})
            out += [
                emit(OutputItemEvent, type="response.output_item.added", output_index=index, item=added),
                emit(WebSearchCallEvent, type="response.web_search_call.completed", **where),
                emit(OutputItemEvent, type="response.output_item.done", output_index=index, item=item),
            ]
            continue
        message = _MessageStream(emit, index, want_logprobs=False, item_id=item.id)
        text = "".join(part.text for part in item.content)
        out += [*message.open(), message.delta(ChoiceDelta(index=0, text=text))]
        message.logprobs = [lp for part in item.content for lp in part.logprobs]
        out += message.close(item.status if item.status != "in_progress" else "completed")[1]
    out.append(emit(ResponseLifecycleEvent, type=f"response.{response.status}", response=response))
    return out


async def replay_stream(response: Response, starting_after: int | None = None) -> AsyncIterator[bytes]:
    """:func:`replay_events` as a stream, from the event after ``starting_after`` on."""
    for chunk in replay_events(response)[0 if starting_after is None else starting_after + 1 :]:
        yield chunk


def _failure(exc: BaseException) -> ResponseError:
    info = describe(exc)
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"] = (
        "rate_limit_exceeded" if info.status == 429 else "invalid_prompt" if info.status < 500 else "server_error"
    )
    return ResponseError(code=code, message=info.message)


async def stream_response(
    generation: Generation,
    base: Response,
    keep: Callable[[Response], Awaitable[Response]],
    want_logprobs: bool,
    tools: ResponsesTools | None = None,
) -> AsyncIterator[bytes]:
    """The event stream of one response, from ``response.created`` to its terminal event.

    The response is stored (``keep``) before the terminal event goes out, so a client can
    continue it as soon as it has seen it; ``keep`` returns the response to send (one that
    could not be stored says ``store: false``). A failure after the first event ends the
    stream with ``response.failed``.
    """
    emit = _Events()
    yield emit(ResponseLifecycleEvent, type="response.created", response=base)
    yield emit(ResponseLifecycleEvent, type="response.in_progress", response=base)
    tools = tools or ResponsesTools()
    output: list[OutputItem] = []
    searches: list[SearchResult] = []
    message: _MessageStream | None = None
    final: Response | None = None
    try:
        async for event in generation.events():
            if isinstance(event, ChoiceDelta):
                if not event.text and not (want_logprobs and event.logprobs):
                    continue
                if message is None:
                    message = _MessageStream(
                        emit, len(output), want_logprobs, grounding=generation.grounding, searches=searches
                    )
                    for chunk in message.open():
                        yield chunk
                yield message.delta(event)
                continue
            if message is not None and not isinstance(event, ChoiceEnd):
                # Anything after text closes the message (a call cut by the limit: incomplete).
                item, chunks = message.close("incomplete" if isinstance(event, ChoiceTruncatedCall) else "completed")
                output.append(item)
                message = None
                for chunk in chunks:
                    yield chunk
            if isinstance(event, ChoiceSearch):
                searches.append(event.search)
                for chunk in _search_events(emit, event.search, len(output)):
                    yield chunk
                output.append(_web_search_call(event.search, "completed"))
            elif isinstance(event, ChoiceToolCall | ChoiceTruncatedCall):
                # A call cut by the token limit is an incomplete function_call item, never text.
                done = tools.item(event.call, "completed" if isinstance(event, ChoiceToolCall) else "incomplete")
                for chunk in _call_events(emit, done, len(output)):
                    yield chunk
                output.append(done)
            else:
                status = "incomplete" if event.finish_reason == "length" else "completed"
                if message is None and not any(not isinstance(item, WebSearchCall) for item in output):
                    # No text and no call: the answer is still one (empty) message.
                    message = _MessageStream(emit, len(output), want_logprobs, grounding=generation.grounding)
                    for chunk in message.open():
                        yield chunk
                if message is not None:
                    item, chunks = message.close(status)
                    output.append(item)
                    message = None
                    for chunk in chunks:
                        yield chunk
                final = _finished(base, output, event.finish_reason, event.usage)
        assert final is not None  # events() ends with the choice's end
        final = await keep(final)
        yield emit(ResponseLifecycleEvent, type=f"response.{final.status}", response=final)
    except Exception as e:
        if not isinstance(e, GemmaLocalError):
            logger.exception("error while streaming %s", generation.id)
        failed = base.model_copy(
            update={"status": "failed", "output": output, "error": _failure(e), "completed_at": int(time.time())}
        )
        yield emit(ResponseLifecycleEvent, type="response.failed", response=failed)
