"""``POST /v1/chat/completions``: OpenAI Chat Completions as a thin layer over the pipeline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, Request

from gemma_local.engine import ChatMessage, GenerationRequest, TextPart, Usage
from gemma_local.engine.types import ImageRef, MessagePart
from gemma_local.engine.types import TokenLogprob as EngineLogprob
from gemma_local.engine.types import ToolCall as EngineToolCall
from gemma_local.pipeline import (
    ChoiceDelta,
    ChoiceResult,
    ChoiceToolCall,
    ChoiceTruncatedCall,
    Generation,
    GenerationOutcome,
    OutputFormat,
    PipelineRequest,
    ToolChoice,
    ToolSpec,
    TruncatedCall,
)
from gemma_local.pipeline.conversation import (
    assistant_message,
    function_tool,
    named_tool,
    new_id,
    replayed_call,
    split_stop,
)
from gemma_local.server.auth import protected_router
from gemma_local.server.errors import error_body
from gemma_local.server.openai_chat_schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageParam,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    ChunkFunction,
    ChunkToolCall,
    CompletionUsage,
    FunctionCall,
    ImageURLPart,
    NamedToolChoiceParam,
    PromptTokensDetails,
    RefusalPart,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    TokenLogprob,
    ToolCall,
    TopLogprob,
)
from gemma_local.server.openapi import sse_event_schema, streamed_or_whole
from gemma_local.server.routing import guarded_stream, respond
from gemma_local.server.runtime import acquire_model, get_models
from gemma_local.server.sse import sse_data
from gemma_local.serving import ModelManager

ENDPOINT = "/v1/chat/completions"

router = protected_router("OpenAI")


@router.post(
    ENDPOINT,
    response_model=ChatCompletion,
    summary="Create a chat completion",
    responses=streamed_or_whole(
        "A chat.completion object; with `stream: true`, server-sent events instead: "
        "`data: <chat.completion.chunk JSON>` events, then `data: [DONE]`.",
        sse_event_schema(ChatCompletionChunk, done="[DONE]"),
    ),
)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, models: ModelManager = Depends(get_models)
) -> Any:
    """Generate one or more answers to a conversation, whole or streamed."""
    pipeline_request = to_pipeline_request(body)  # a malformed body is refused before any model loads
    return await respond(
        request,
        await acquire_model(request, models, body.model, body.keep_alive),
        pipeline_request,
        stream=(lambda generation: stream_chunks(generation, body)) if body.stream else None,
        whole=lambda _, outcome: to_chat_completion(outcome, logprobs=bool(body.logprobs)),
    )


# --- request translation -------------------------------------------------------------------


def _message(message: ChatMessageParam, index: int) -> ChatMessage:
    parts: list[MessagePart] = []
    if isinstance(message.content, str):
        parts.append(TextPart(message.content))
    elif message.content is not None:
        for j, part in enumerate(message.content):
            if isinstance(part, ImageURLPart):
                parts.append(ImageRef(url=part.image_url.url, param=f"messages[{index}].content[{j}]"))
            elif isinstance(part, RefusalPart):
                parts.append(TextPart(part.refusal))
            else:
                parts.append(TextPart(part.text))
    if message.role == "assistant":
        # Replayed calls go back to the model in the call format it writes them in.
        calls = [
            replayed_call(c.id, c.function.name, c.function.arguments, param=f"messages[{index}].tool_calls[{k}]")
            for k, c in enumerate(message.tool_calls or [])
        ]
        return assistant_message(parts, calls)
    return ChatMessage(role=message.role, content=tuple(parts))


def _tool_choice(body: ChatCompletionRequest, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoiceParam):
        return named_tool(choice.function.name, tools)
    return choice or "auto"


def _output_format(body: ChatCompletionRequest) -> OutputFormat | None:
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJSONSchema):
        spec = fmt.json_schema
        # No schema: any JSON value the model writes, which JSON mode narrows to an object.
        if spec.schema_ is None:
            return OutputFormat(type="json_object", name=spec.name)
        return OutputFormat(
            type="json_schema",
            schema=spec.schema_,
            name=spec.name,
            strict=bool(spec.strict),
            param="response_format.json_schema.schema",
        )
    if isinstance(fmt, ResponseFormatJSONObject):
        return OutputFormat(type="json_object")
    return None


def to_pipeline_request(body: ChatCompletionRequest) -> PipelineRequest:
    """Translate a Chat Completions request into the pipeline's common request."""
    messages = tuple(_message(m, i) for i, m in enumerate(body.messages))
    tools = tuple(
        function_tool(t.function.name, t.function.description, t.function.parameters, t.function.strict)
        for t in body.tools or []
    )
    generation = GenerationRequest(
        messages=messages,
        sampling=body.to_sampling(),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=split_stop(body.stop),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        continue_final_message=bool(body.continue_final_message),
    )
    return PipelineRequest(
        endpoint=ENDPOINT,
        request_id=new_id("chatcmpl-"),
        model=body.model,
        generation=generation,
        n=body.n or 1,
        **body.search_hook(),
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        output_format=_output_format(body),
    )


# --- response translation ------------------------------------------------------------------


def _logprobs(items: tuple[EngineLogprob, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=list(lp.bytes),
                top_logprobs=[TopLogprob(token=t, logprob=p, bytes=list(b)) for t, p, b in lp.top],
            )
            for lp in items
        ]
    )


def _usage(usage: Usage) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def _tool_call(call: EngineToolCall | TruncatedCall) -> ToolCall:
    return ToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments_json))


def _assistant_message(choice: ChoiceResult) -> AssistantMessage:
    # A call cut by the token limit is one more call, its arguments as far as they got
    # (finish_reason "length" says it is cut), as OpenAI reports it: never text.
    calls = [*choice.tool_calls, *([choice.truncated_call] if choice.truncated_call else [])]
    if not calls:
        return AssistantMessage(content=choice.text)
    # Only calls: content is null (the SDK's helpers tell a call-only answer by it).
    content = choice.text if choice.text.strip() else None
    return AssistantMessage(content=content, tool_calls=[_tool_call(c) for c in calls])


def to_chat_completion(outcome: GenerationOutcome, *, logprobs: bool) -> ChatCompletion:
    """The ``chat.completion`` object for a finished generation."""
    return ChatCompletion(
        id=outcome.id,
        created=outcome.created,
        model=outcome.model,
        choices=[
            Choice(
                index=c.index,
                message=_assistant_message(c),
                finish_reason=c.finish_reason,
                logprobs=_logprobs(c.logprobs) if logprobs else None,
            )
            for c in outcome.choices
        ],
        usage=_usage(outcome.usage),
        search=outcome.grounding.metadata if outcome.grounding is not None else None,
    )


def stream_chunks(generation: Generation, body: ChatCompletionRequest) -> AsyncIterator[bytes]:
    """The SSE events of a streamed answer; an error after the first event becomes an error event."""
    return guarded_stream(_chunks(generation, body), lambda e: sse_data(error_body(e)), generation.id)


async def _chunks(generation: Generation, body: ChatCompletionRequest) -> AsyncIterator[bytes]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    want_logprobs = bool(body.logprobs)

    def chunk(
        choices: list[ChunkChoice], usage: CompletionUsage | None = None, search: dict[str, Any] | None = None
    ) -> bytes:
        payload = ChatCompletionChunk(
            id=generation.id,
            created=generation.created,
            model=generation.model,
            choices=choices,
            usage=usage,
            search=search,
        )
        data = payload.model_dump(mode="json")
        if not include_usage:
            del data["usage"]
        if search is None:
            del data["search"]
        return sse_data(data)

    # The role goes out once per choice: the SDK's helper concatenates repeated fields.
    search = generation.grounding.metadata if generation.grounding is not None else None
    calls_made = [0] * generation.n
    for i in range(generation.n):
        yield chunk([ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""))], search=search)
        search = None
    async for event in generation.events():
        if isinstance(event, ChoiceDelta):
            if not event.text and not (want_logprobs and event.logprobs):
                continue
            yield chunk(
                [
                    ChunkChoice(
                        index=event.index,
                        delta=ChunkDelta(content=event.text),
                        logprobs=_logprobs(event.logprobs) if want_logprobs else None,
                    )
                ]
            )
        elif isinstance(event, ChoiceToolCall | ChoiceTruncatedCall):
            # Id and name first, then the arguments, as OpenAI streams them.
            k = calls_made[event.index]
            calls_made[event.index] += 1
            call = event.call
            head = ChunkToolCall(
                index=k, id=call.id, type="function", function=ChunkFunction(name=call.name, arguments="")
            )
            arguments = ChunkToolCall(index=k, function=ChunkFunction(arguments=call.arguments_json))
            for piece in (head, arguments):
                yield chunk([ChunkChoice(index=event.index, delta=ChunkDelta(tool_calls=[piece]))])
        else:
            yield chunk([ChunkChoice(index=event.index, delta=ChunkDelta(), finish_reason=event.finish_reason)])
    if include_usage:
        yield chunk([], usage=_usage(generation.usage))
    yield b"data: [DONE]\n\n"
