"""``POST /v1/messages``: the Anthropic Messages API as a thin layer over the pipeline.

Also ``POST /v1/messages/count_tokens``. Errors on these routes use Anthropic's envelope
(``{"type": "error", "error": {"type", "message"}}``, see ``server/errors.py``); a failure
after a stream has started is an ``event: error``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import Depends, Request

from gemma_local.engine import ChatMessage, GenerationRequest, TextPart, Usage
from gemma_local.engine.types import ImageRef, MessagePart
from gemma_local.pipeline import (
    ChoiceDelta,
    ChoiceEnd,
    ChoiceSearch,
    ChoiceToolCall,
    ChoiceTruncatedCall,
    Generation,
    GenerationOutcome,
    HostedSearch,
    OutputFormat,
    PipelineFinishReason,
    PipelineRequest,
    SearchResult,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from gemma_local.pipeline.conversation import assistant_message, function_tool, named_tool, new_id
from gemma_local.server.anthropic_messages_schemas import (
    STREAM_EVENTS,
    CitationsDelta,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    CountTokensRequest,
    ImageBlockParam,
    InputJSONDelta,
    Message,
    MessageDeltaEvent,
    MessageParam,
    MessagesRequest,
    MessageStartEvent,
    MessageStopEvent,
    MessageUsage,
    PingEvent,
    ResponseBlock,
    ServerToolUseBlock,
    StopDelta,
    StopReason,
    StreamEvent,
    TextBlock,
    TextBlockParam,
    TextDelta,
    TokenCount,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    WebSearchCitation,
    WebSearchResultBlock,
    WebSearchToolParam,
    WebSearchToolResultBlock,
)
from gemma_local.server.auth import protected_router
from gemma_local.server.errors import error_body
from gemma_local.server.openapi import sse_event_schema, streamed_or_whole
from gemma_local.server.routing import guarded_stream, respond
from gemma_local.server.runtime import acquire_model, get_models
from gemma_local.server.sse import sse_event
from gemma_local.serving import ModelManager

ENDPOINT = "/v1/messages"
#: A stream silent this long (a long prompt being read) gets a ``ping``, so proxies keep it open.
KEEPALIVE_S = 10.0


router = protected_router("Anthropic")


@router.post(
    ENDPOINT,
    response_model=Message,
    summary="Create a message",
    responses=streamed_or_whole(
        "A message; with `stream: true`, server-sent events instead (`event: <type>` + `data:`), "
        "from `message_start` to `message_stop`.",
        sse_event_schema(*STREAM_EVENTS, style="anthropic"),
    ),
)
async def create_message(body: MessagesRequest, request: Request, models: ModelManager = Depends(get_models)) -> Any:
    """Generate the next assistant message of a conversation, whole or streamed."""
    pipeline_request = to_pipeline_request(body)  # a malformed body is refused before any model loads
    return await respond(
        request,
        await acquire_model(request, models, body.model, body.keep_alive),
        pipeline_request,
        stream=stream_message if body.stream else None,
        whole=lambda _, outcome: to_message(outcome),
    )


@router.post(ENDPOINT + "/count_tokens", response_model=TokenCount, summary="Count the tokens of a message")
async def count_tokens(
    body: CountTokensRequest, request: Request, models: ModelManager = Depends(get_models)
) -> TokenCount:
    """The prompt tokens a Messages request with this conversation would have (images included)."""
    pipeline_request = to_pipeline_request(body)
    lease = await acquire_model(request, models, body.model)
    try:
        return TokenCount(input_tokens=await lease.pipeline.count_tokens(pipeline_request))
    finally:
        lease.release()


# --- request translation -----------------------------------------------------------------------


def _image(block: ImageBlockParam, param: str) -> ImageRef:
    source = block.source
    if source.type == "base64":
        return ImageRef(base64=source.data, media_type=source.media_type, param=param)
    return ImageRef(url=source.url, param=param)


def _blocks(blocks: list[tuple[int, Any]], param: str) -> list[MessagePart]:
    """Text and image blocks (each with its index in ``param``'s content, for error messages)."""
    parts: list[MessagePart] = []
    for j, block in blocks:
        if isinstance(block, ImageBlockParam):
            parts.append(_image(block, f"{param}.content[{j}]"))
        elif isinstance(block, TextBlockParam):
            parts.append(TextPart(block.text))
    return parts


def _tool_result(block: ToolResultBlockParam, param: str) -> ChatMessage:
    content = block.content if block.content is not None else ""
    parts = [TextPart(content)] if isinstance(content, str) else _blocks(list(enumerate(content)), param)
    if block.is_error:
        # The model should know the call failed, not read the error as a result.
        parts.insert(0, TextPart("Error:"))
    return ChatMessage(role="tool", content=tuple(parts))


def _message(message: MessageParam, index: int) -> list[ChatMessage]:
    """One Anthropic message; a user message's tool results become tool turns, in order."""
    param = f"messages[{index}]"
    if isinstance(message.content, str):
        return [ChatMessage.text(message.role, message.content)]
    if message.role == "assistant":
        texts = [TextPart(b.text) for b in message.content if isinstance(b, TextBlockParam)]
        calls = [
            ToolCall(id=b.id, name=b.name, arguments=b.input)
            for b in message.content
            if isinstance(b, ToolUseBlockParam)
        ]
        return [assistant_message(texts, calls)]
    out: list[ChatMessage] = []
    pending: list[tuple[int, Any]] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolResultBlockParam):
            if pending:
                out.append(ChatMessage(role=message.role, content=tuple(_blocks(pending, param))))
                pending = []
            out.append(_tool_result(block, f"{param}.content[{j}]"))
        else:
            pending.append((j, block))
    if pending:
        out.append(ChatMessage(role=message.role, content=tuple(_blocks(pending, param))))
    return out


def _tool_choice(
    body: CountTokensRequest | MessagesRequest, tools: tuple[ToolSpec, ...], search: HostedSearch | None
) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceTool):
        return named_tool(choice.name, (*tools, *([search.spec()] if search else [])))
    if isinstance(choice, ToolChoiceAny):
        return "required"
    if isinstance(choice, ToolChoiceNone):
        return "none"
    return "auto"


#: How Claude Code's client metadata block starts (its version and a per-session hash: not
#: instructions, and it would make every new session's prompt differ from its first line).
CLIENT_METADATA_PREFIX = "x-anthropic-billing-header:"


def _system_text(system: str | list[TextBlockParam]) -> str:
    """The system prompt, without client metadata blocks; list and string forms read alike."""
    texts = [system] if isinstance(system, str) else [block.text for block in system]
    return "\n\n".join(t for t in texts if not t.lstrip().startswith(CLIENT_METADATA_PREFIX))


def _tools(body: CountTokensRequest | MessagesRequest) -> tuple[tuple[ToolSpec, ...], HostedSearch | None]:
    """The client tools offered to the model, and the hosted web search if the request has it.

    ``defer_loading`` tools are left out: they are announced for a tool search the client
    runs itself, and the model must not call them directly.
    """
    specs: list[ToolSpec] = []
    search = None
    for tool in body.tools or []:
        if isinstance(tool, WebSearchToolParam):
            domains = tuple(tool.allowed_domains or ())
            search = HostedSearch(name=tool.name, max_uses=tool.max_uses or 3, allowed_domains=domains)
        elif not tool.defer_loading:
            specs.append(function_tool(tool.name, tool.description, tool.input_schema, tool.strict))
    return tuple(specs), search


def to_pipeline_request(body: CountTokensRequest | MessagesRequest) -> PipelineRequest:
    """Translate a Messages (or count_tokens) request into the pipeline's common request."""
    tools, search = _tools(body)
    messages: list[ChatMessage] = []
    system = _system_text(body.system) if body.system else ""
    if system:
        messages.append(ChatMessage.text("system", system))
    for i, message in enumerate(body.messages):
        messages.extend(_message(message, i))
    fmt = body.output_config.format if body.output_config else None
    options: dict[str, Any] = {}
    if isinstance(body, MessagesRequest):
        options = {
            "sampling": body.to_sampling(),
            "max_tokens": body.max_tokens,
            "stop": tuple(s for s in body.stop_sequences or () if s),
        }
    generation = GenerationRequest(
        messages=tuple(messages),
        # A last assistant message is a prefill: the answer continues it.
        continue_final_message=body.messages[-1].role == "assistant",
        **options,
    )
    return PipelineRequest(
        endpoint=ENDPOINT,
        request_id=new_id("msg_"),
        model=body.model,
        generation=generation,
        **(body.search_hook() if isinstance(body, MessagesRequest) else {}),
        tools=tools,
        tool_choice=_tool_choice(body, tools, search),
        hosted_search=search,
        stop_param="stop_sequences",
        # Anthropic says it the other way round, on the choice itself.
        parallel_tool_calls=not getattr(body.tool_choice, "disable_parallel_tool_use", None),
        output_format=(
            OutputFormat(type="json_schema", schema=fmt.schema_, param="output_config.format.schema") if fmt else None
        ),
    )


# --- response translation ----------------------------------------------------------------------


def stop_reason(finish_reason: PipelineFinishReason, stop_sequence: str | None) -> StopReason:
    """The pipeline's finish reason in Anthropic's terms (as vLLM maps them)."""
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def _usage(usage: Usage) -> MessageUsage:
    return MessageUsage(
        input_tokens=usage.prompt_tokens - usage.cached_tokens,
        cache_read_input_tokens=usage.cached_tokens,
        output_tokens=usage.completion_tokens,
    )


def _tool_use(call: ToolCall) -> ToolUseBlock:
    return ToolUseBlock(id=call.id_for("toolu_"), name=call.name, input=call.arguments)


def _search_blocks(search: SearchResult) -> tuple[ServerToolUseBlock, WebSearchToolResultBlock]:
    """A hosted search as Anthropic reports it: the server's tool use, then its results."""
    use = ServerToolUseBlock(id="srvtoolu_" + search.call_id.split("_", 1)[-1], input={"query": search.query})
    results = [
        WebSearchResultBlock(
            url=s.url, title=s.title or s.url, encrypted_content=base64.b64encode(s.snippet.encode()).decode()
        )
        for s in search.sources
    ]
    return use, WebSearchToolResultBlock(tool_use_id=use.id, content=results)


def _citations(text: str, searches: Sequence[SearchResult]) -> list[WebSearchCitation] | None:
    """The text's ``[n]`` as citations of the latest search's results (None without searches)."""
    if not searches:
        return None
    latest = searches[-1]
    return [
        WebSearchCitation(
            url=c.url,
            title=c.title,
            encrypted_index=str(c.number),
            cited_text=latest.sources[c.number - 1].snippet[:200],
        )
        for c in latest.cite(text)
    ]


def to_message(outcome: GenerationOutcome) -> Message:
    """The message for a finished generation: its hosted searches, its text, then a ``tool_use``
    block per call."""
    choice = outcome.choices[0]
    blocks: list[ResponseBlock] = [block for search in choice.searches for block in _search_blocks(search)]
    if choice.text:
        blocks.append(TextBlock(text=choice.text, citations=_citations(choice.text, choice.searches)))
    blocks.extend(_tool_use(call) for call in choice.tool_calls)
    reason = stop_reason(choice.finish_reason, choice.stop_sequence)
    return Message(
        id=outcome.id,
        model=outcome.model,
        content=blocks,
        stop_reason=reason,
        stop_sequence=choice.stop_sequence if reason == "stop_sequence" else None,
        usage=_usage(choice.usage),
        search=outcome.grounding.metadata if outcome.grounding is not None else None,
    )


def _event(payload: StreamEvent) -> bytes:
    return sse_event(payload.type, payload)


_PING = _event(PingEvent())


async def _with_keepalive(events: AsyncIterator[Any], interval: float) -> AsyncIterator[Any]:
    """``events``, with None yielded whenever ``interval`` seconds pass without one."""
    iterator = aiter(events)
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class _Blocks:
    """The content-block events of one streamed message; blocks are numbered 0, 1, 2, ..."""

    def __init__(self) -> None:
        self.index = 0
        self.text_open = False
        self.pinged = False
        self.searches: list[SearchResult] = []
        self._text: list[str] = []

    def _start(self, block: ResponseBlock) -> list[bytes]:
        out = [_event(ContentBlockStartEvent(index=self.index, content_block=block))]
        if not self.pinged:
            # Where Anthropic sends its first ping: right after the first block starts.
            out.append(_PING)
            self.pinged = True
        return out

    def close_text(self) -> list[bytes]:
        if not self.text_open:
            return []
        # The text's citations of the hosted search it follows: known once the text is whole.
        citations = _citations("".join(self._text), self.searches) or []
        out = [_event(ContentBlockDeltaEvent(index=self.index, delta=CitationsDelta(citation=c))) for c in citations]
        self.text_open = False
        self._text = []
        self.index += 1
        return [*out, _event(ContentBlockStopEvent(index=self.index - 1))]

    def text(self, text: str) -> list[bytes]:
        out = [] if self.text_open else self._start(TextBlock(text=""))
        self.text_open = True
        self._text.append(text)
        return [*out, _event(ContentBlockDeltaEvent(index=self.index, delta=TextDelta(text=text)))]

    def search(self, search: SearchResult) -> list[bytes]:
        """A hosted search: the server's tool use (its input as one delta), then its results."""
        self.searches.append(search)
        use, results = _search_blocks(search)
        out = [
            *self.close_text(),
            *self._start(use.model_copy(update={"input": {}})),
            _event(ContentBlockDeltaEvent(index=self.index, delta=InputJSONDelta(partial_json=json.dumps(use.input)))),
            _event(ContentBlockStopEvent(index=self.index)),
        ]
        self.index += 1
        out += [*self._start(results), _event(ContentBlockStopEvent(index=self.index))]
        self.index += 1
        return out

    def tool_use(self, call: ToolCall) -> list[bytes]:
        # The block starts with an empty input: the SDK's helper builds it from the deltas.
        block = _tool_use(call).model_copy(update={"input": {}})
        delta = InputJSONDelta(partial_json=call.arguments_json)
        out = [
            *self.close_text(),
            *self._start(block),
            _event(ContentBlockDeltaEvent(index=self.index, delta=delta)),
            _event(ContentBlockStopEvent(index=self.index)),
        ]
        self.index += 1
        return out

    def end(self, event: ChoiceEnd) -> list[bytes]:
        out = self.close_text()
        if not self.pinged:
            out.append(_PING)
        reason = stop_reason(event.finish_reason, event.stop_sequence)
        delta = StopDelta(stop_reason=reason, stop_sequence=event.stop_sequence if reason == "stop_sequence" else None)
        return [*out, _event(MessageDeltaEvent(delta=delta, usage=_usage(event.usage)))]


def stream_message(generation: Generation) -> AsyncIterator[bytes]:
    """The event stream of one message; a failure after the first event becomes ``event: error``."""
    return guarded_stream(
        _message_events(generation), lambda e: sse_event("error", error_body(e, "anthropic")), generation.id
    )


async def _message_events(generation: Generation) -> AsyncIterator[bytes]:
    start = Message(
        id=generation.id,
        model=generation.model,
        content=[],
        # The cache hits are known only at the end; message_delta's usage overwrites these.
        usage=MessageUsage(input_tokens=generation.prompt_tokens, output_tokens=0),
        search=generation.grounding.metadata if generation.grounding is not None else None,
    )
    yield _event(MessageStartEvent(message=start))
    blocks = _Blocks()
    # aclosing: a client that leaves must stop the waiting task at once, not at garbage collection.
    async with contextlib.aclosing(_with_keepalive(generation.events(), KEEPALIVE_S)) as events:
        async for event in events:
            if event is None:
                chunks = [_PING]
            elif isinstance(event, ChoiceDelta):
                chunks = blocks.text(event.text) if event.text else []
            elif isinstance(event, ChoiceToolCall):
                chunks = blocks.tool_use(event.call)
            elif isinstance(event, ChoiceSearch):
                chunks = blocks.search(event.search)
            elif isinstance(event, ChoiceTruncatedCall):
                # A tool_use input must be a whole object: a call cut by max_tokens has no place
                # here, so it is dropped (stop_reason says max_tokens), never sent as text.
                chunks = []
            else:
                chunks = blocks.end(event)
            for chunk in chunks:
                yield chunk
    yield _event(MessageStopEvent())
