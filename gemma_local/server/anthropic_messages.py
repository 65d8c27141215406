"""``POST /v1/messages``: the Anthropic Messages API as a thin layer over the pipeline.

Also ``POST /v1/messages/count_tokens``. Errors on these routes use Anthropic's envelope
(``{"type": "error", "error": {"type", "message"}}``, see ``server/errors.py``); a failure
after a stream has started is an ``event: error``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Request

from gemma_local.engine import ChatMessage, GenerationRequest, TextPart, Usage
from gemma_local.engine.types import ImageRef, MessagePart
from gemma_local.pipeline import (
    ChoiceDelta,
    ChoiceEnd,
    ChoiceToolCall,
    ChoiceTruncatedCall,
    Generation,
    GenerationOutcome,
    OutputFormat,
    PipelineFinishReason,
    PipelineRequest,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from gemma_local.pipeline.conversation import assistant_message, function_tool, named_tool, new_id
from gemma_local.server.anthropic_messages_schemas import (
    STREAM_EVENTS,
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


def _tool_choice(body: CountTokensRequest | MessagesRequest, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, ToolChoiceTool):
        return named_tool(choice.name, tools)
    if isinstance(choice, ToolChoiceAny):
        return "required"
    if isinstance(choice, ToolChoiceNone):
        return "none"
    return "auto"


def to_pipeline_request(body: CountTokensRequest | MessagesRequest) -> PipelineRequest:
    """Translate a Messages (or count_tokens) request into the pipeline's common request."""
    tools = tuple(function_tool(t.name, t.description, t.input_schema, t.strict) for t in body.tools or [])
    messages: list[ChatMessage] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else "\n\n".join(b.text for b in body.system)
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
        tool_choice=_tool_choice(body, tools),
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


def to_message(outcome: GenerationOutcome) -> Message:
    """The message for a finished generation: its text, then a ``tool_use`` block per call."""
    choice = outcome.choices[0]
    blocks: list[ResponseBlock] = [TextBlock(text=choice.text)] if choice.text else []
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

    def _start(self, block: TextBlock | ToolUseBlock) -> list[bytes]:
        out = [_event(ContentBlockStartEvent(index=self.index, content_block=block))]
        if not self.pinged:
            # Where Anthropic sends its first ping: right after the first block starts.
            out.append(_PING)
            self.pinged = True
        return out

    def close_text(self) -> list[bytes]:
        if not self.text_open:
            return []
        self.text_open = False
        self.index += 1
        return [_event(ContentBlockStopEvent(index=self.index - 1))]

    def text(self, text: str) -> list[bytes]:
        out = [] if self.text_open else self._start(TextBlock(text=""))
        self.text_open = True
        return [*out, _event(ContentBlockDeltaEvent(index=self.index, delta=TextDelta(text=text)))]

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
            elif isinstance(event, ChoiceTruncatedCall):
                # A tool_use input must be a whole object: a call cut by max_tokens has no place
                # here, so it is dropped (stop_reason says max_tokens), never sent as text.
                chunks = []
            else:
                chunks = blocks.end(event)
            for chunk in chunks:
                yield chunk
    yield _event(MessageStopEvent())
