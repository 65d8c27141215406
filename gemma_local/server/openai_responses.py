"""``/v1/responses``: the OpenAI Responses API as a thin layer over the pipeline, with stored state.

``POST /v1/responses`` translates the input items (and, with ``previous_response_id``, the
stored conversation before them) into the pipeline's common request, and the pipeline's
result (or its events) into a response object (or its event stream). With ``store`` (the
default) the response and its input are kept in :mod:`~gemma_local.server.responses_store`,
which ``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items`` read.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio.to_thread
from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse

from gemma_local.engine import ChatMessage, GenerationRequest, TextPart
from gemma_local.engine.types import ImageRef, MessagePart
from gemma_local.errors import InvalidRequestError
from gemma_local.paths import data_file
from gemma_local.pipeline import (
    Generation,
    GenerationOutcome,
    OutputFormat,
    PipelineRequest,
    ToolCall,
    conversation,
)
from gemma_local.pipeline.conversation import assistant_message, new_id, replayed_call
from gemma_local.server.auth import protected_router
from gemma_local.server.errors import ResourceNotFoundError
from gemma_local.server.openai_responses_output import finish_response, replay_stream, response_base, stream_response
from gemma_local.server.openai_responses_schemas import (
    STREAM_EVENTS,
    AssistantMessageItem,
    CustomToolCall,
    CustomToolCallItemParam,
    CustomToolCallOutputItemParam,
    DeletedResponse,
    FormatJSONObject,
    FormatJSONSchema,
    FunctionCall,
    FunctionCallItemParam,
    FunctionCallOutputItemParam,
    InputImagePart,
    InputItemList,
    MessageItemBase,
    OutputMessage,
    OutputText,
    RefusalPart,
    Response,
    ResponseCreateRequest,
    StoredCustomToolCallOutput,
    StoredFunctionCallOutput,
    StoredInputImage,
    StoredInputMessage,
    StoredInputPart,
    StoredInputText,
    StoredItem,
    WebSearchAction,
    WebSearchCall,
    WebSearchCallItemParam,
)
from gemma_local.server.openai_responses_tools import ResponsesTools, responses_tools, tool_choice
from gemma_local.server.openapi import sse_event_schema, streamed_or_whole
from gemma_local.server.responses_store import ResponseStore
from gemma_local.server.routing import respond
from gemma_local.server.runtime import acquire_model, get_models
from gemma_local.server.sse import sse_response
from gemma_local.serving import ModelManager

ENDPOINT = "/v1/responses"
#: ``include`` value that asks for token logprobs in ``output_text`` parts.
LOGPROBS_INCLUDE = "message.output_text.logprobs"
_DAY_S = 86_400.0

logger = logging.getLogger("gemma_local.server")

router = protected_router("OpenAI")


async def get_response_store(request: Request) -> ResponseStore:
    """FastAPI dependency: the app's response store (the database is opened on first use)."""
    state = request.app.state
    store: ResponseStore | None = getattr(state, "responses_store", None)
    if store is None:
        settings = state.runtime.settings
        store = ResponseStore(
            settings.responses_db or data_file("responses.db"),
            max_count=settings.responses_max_stored,
            max_age_s=settings.responses_max_age_days * _DAY_S if settings.responses_max_age_days > 0 else None,
        )
        state.responses_store = store
    return store


def _not_found(response_id: str, param: str | None = None) -> ResourceNotFoundError:
    return ResourceNotFoundError(
        f"No stored response with id '{response_id}': it was never stored (store: false), was deleted, "
        "or is past the server's retention limits.",
        param=param,
        code="previous_response_not_found" if param == "previous_response_id" else "response_not_found",
    )


# --- routes ----------------------------------------------------------------------------------


@router.post(
    ENDPOINT,
    response_model=Response,
    summary="Create a response",
    responses=streamed_or_whole(
        "A response object; with `stream: true`, server-sent events instead: "
        "`event: <type>` / `data: <JSON>` pairs from `response.created` to `response.completed`.",
        sse_event_schema(*STREAM_EVENTS),
    ),
)
async def create_response(
    body: ResponseCreateRequest,
    request: Request,
    models: ModelManager = Depends(get_models),
    store: ResponseStore = Depends(get_response_store),
) -> Any:
    """Generate a model response to input items, continuing a stored one if asked; whole or streamed."""
    history: list[StoredItem] = []
    if body.previous_response_id:
        previous = await anyio.to_thread.run_sync(store.get, body.previous_response_id)
        if previous is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
        history = [*_parse_stored(previous.input_items), *_parse_stored(previous.response["output"])]
    items = [*history, *stored_input_items(body.input)]
    params = ["previous_response_id"] * len(history) + [f"input[{i}]" for i in range(len(items) - len(history))]
    want_logprobs = LOGPROBS_INCLUDE in (body.include or [])

    async def keep(response: Response) -> Response:
        """Store the response; return it as sent (``store: false`` when storing it failed)."""
        if body.store is False:
            return response
        dumped = [item.model_dump(mode="json") for item in items]
        try:
            await anyio.to_thread.run_sync(store.save, response.model_dump(mode="json"), dumped)
        except (sqlite3.Error, OSError):
            # The answer is done: a full disk or a locked database loses the record, not the answer.
            logger.exception("could not store response %s; it is returned with store: false", response.id)
            return response.model_copy(update={"store": False})
        return response

    tools = responses_tools(body.tools)

    def stream(generation: Generation) -> AsyncIterator[bytes]:
        return stream_response(generation, response_base(body, generation), keep, want_logprobs, tools)

    async def whole(generation: Generation, outcome: GenerationOutcome) -> Response:
        base = response_base(body, generation)
        return await keep(finish_response(base, outcome.choices[0], want_logprobs, outcome.grounding, tools))

    # The stored conversation is text, so a response continued with another model is simply
    # prefilled again by that model (no KV cache is shared between models).
    pipeline_request = to_pipeline_request(body, items, params, tools)
    lease = await acquire_model(request, models, body.model, body.keep_alive)
    return await respond(request, lease, pipeline_request, stream=stream if body.stream else None, whole=whole)


@router.get(
    ENDPOINT + "/{response_id}",
    response_model=Response,
    summary="Retrieve a stored response",
    responses={
        200: {
            "description": "The response object; with `stream=true`, its events again (as `POST` streamed them).",
            "content": {"text/event-stream": {"schema": sse_event_schema(*STREAM_EVENTS)}},
        }
    },
)
async def retrieve_response(
    response_id: str,
    stream: bool = Query(False, description="Replay the response as the events of a stream."),
    starting_after: int | None = Query(None, ge=0, description="With stream: only the events after this one."),
    store: ResponseStore = Depends(get_response_store),
) -> Any:
    """A stored response, exactly as it was returned when it was created (or replayed as a stream)."""
    found = await anyio.to_thread.run_sync(store.get, response_id)
    if found is None:
        raise _not_found(response_id)
    if stream:
        return sse_response(replay_stream(Response.model_validate(found.response), starting_after))
    return JSONResponse(found.response)


@router.delete(ENDPOINT + "/{response_id}", response_model=DeletedResponse, summary="Delete a stored response")
async def delete_response(response_id: str, store: ResponseStore = Depends(get_response_store)) -> DeletedResponse:
    """Forget a stored response: it can no longer be retrieved or continued."""
    if not await anyio.to_thread.run_sync(store.delete, response_id):
        raise _not_found(response_id)
    return DeletedResponse(id=response_id)


@router.get(
    ENDPOINT + "/{response_id}/input_items", response_model=InputItemList, summary="List a response's input items"
)
async def list_input_items(
    response_id: str,
    after: str | None = Query(None, description="List the items after this item id."),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc", description="desc: newest item first."),
    store: ResponseStore = Depends(get_response_store),
) -> Any:
    """Every input item the response was generated from (its predecessors' included), one page."""
    found = await anyio.to_thread.run_sync(store.get, response_id)
    if found is None:
        raise _not_found(response_id)
    items = found.input_items if order == "asc" else found.input_items[::-1]
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequestError(f"No input item with id '{after}' in this response.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    body = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
        "has_more": len(items) > limit,
    }
    return JSONResponse(body)


# --- request translation ---------------------------------------------------------------------


def _parse_stored(values: list[dict[str, Any]]) -> list[StoredItem]:
    return list(InputItemList.model_validate({"data": values, "first_id": "", "last_id": "", "has_more": False}).data)


def _stored_parts(content: str | list[Any]) -> list[StoredInputPart]:
    if isinstance(content, str):
        return [StoredInputText(text=content)]
    parts: list[StoredInputPart] = []
    for part in content:
        if isinstance(part, InputImagePart):
            parts.append(StoredInputImage(image_url=part.image_url, detail=part.detail or "auto"))
        else:
            parts.append(StoredInputText(text=part.text))
    return parts


def stored_input_items(value: str | list[Any]) -> list[StoredItem]:
    """The request's input, normalised into the items that are stored and listed (each with an id)."""
    if isinstance(value, str):
        return [StoredInputMessage(id=new_id("msg_"), role="user", content=[StoredInputText(text=value)])]
    items: list[StoredItem] = []
    for item in value:
        if isinstance(item, AssistantMessageItem):
            content = [item.content] if isinstance(item.content, str) else item.content
            texts = [p if isinstance(p, str) else p.refusal if isinstance(p, RefusalPart) else p.text for p in content]
            message = OutputMessage(
                id=item.id or new_id("msg_"), status="completed", content=[OutputText(text=t) for t in texts]
            )
            items.append(message)
        elif isinstance(item, MessageItemBase):
            parts = _stored_parts(item.content)
            items.append(StoredInputMessage(id=item.id or new_id("msg_"), role=item.role, content=parts))
        elif isinstance(item, FunctionCallItemParam):
            items.append(
                FunctionCall(
                    id=item.id or new_id("fc_"),
                    call_id=item.call_id,
                    name=item.name,
                    arguments=item.arguments,
                    # Only a call cut by the token limit keeps its status: it is not replayed.
                    status="incomplete" if item.status == "incomplete" else "completed",
                    namespace=item.namespace,
                )
            )
        elif isinstance(item, CustomToolCallItemParam):
            status = "incomplete" if item.status == "incomplete" else "completed"
            call_id, name, namespace = item.call_id, item.name, item.namespace
            items.append(
                CustomToolCall(
                    id=item.id or new_id("ctc_"),
                    call_id=call_id,
                    name=name,
                    input=item.input,
                    status=status,
                    namespace=namespace,
                )
            )
        elif isinstance(item, FunctionCallOutputItemParam):  # custom_tool_call_output included
            output = item.output if isinstance(item.output, str) else _stored_parts(item.output)
            stored = (
                StoredCustomToolCallOutput
                if isinstance(item, CustomToolCallOutputItemParam)
                else StoredFunctionCallOutput
            )
            items.append(stored(id=item.id or new_id("fco_"), call_id=item.call_id, output=output))
        elif isinstance(item, WebSearchCallItemParam):
            query = (item.action or {}).get("query")
            action = WebSearchAction(query=query if isinstance(query, str) else None)
            items.append(WebSearchCall(id=item.id or new_id("ws_"), action=action))
        # Reasoning items: Gemma 3 writes none and reads none.
    return items


def _parts(parts: list[StoredInputPart], param: str) -> list[MessagePart]:
    out: list[MessagePart] = []
    for j, part in enumerate(parts):
        if isinstance(part, StoredInputImage):
            out.append(ImageRef(url=part.image_url, param=f"{param}.content[{j}]"))
        else:
            out.append(TextPart(part.text))
    return out


def to_messages(items: list[StoredItem], params: list[str], tools: ResponsesTools | None = None) -> list[ChatMessage]:
    """The conversation the items describe; consecutive tool calls form one assistant turn.

    Calls go back to the model under the names it was offered the tools by (a namespaced
    function by its own name, a custom tool's input as its ``input`` argument). A hosted web
    search is left out: the answer that followed it already holds what it found.
    """
    tools = tools or ResponsesTools()
    messages: list[ChatMessage] = []
    calls: list[ToolCall] = []
    for item, param in zip(items, params, strict=True):
        if isinstance(item, WebSearchCall):
            continue
        if isinstance(item, FunctionCall | CustomToolCall):
            if item.status == "incomplete":  # a call cut by the token limit was never made
                continue
            name = tools.model_name(item.name, item.namespace)
            if isinstance(item, CustomToolCall):
                calls.append(ToolCall(id=item.call_id, name=name, arguments={"input": item.input}))
            else:
                calls.append(replayed_call(item.call_id, name, item.arguments, param=f"{param}.arguments"))
            continue
        if calls:
            messages.append(assistant_message((), calls))
            calls = []
        if isinstance(item, OutputMessage):
            messages.append(assistant_message([TextPart(p.text) for p in item.content]))
        elif isinstance(item, StoredInputMessage):
            messages.append(ChatMessage(role=item.role, content=tuple(_parts(item.content, param))))
        else:
            output = [StoredInputText(text=item.output)] if isinstance(item.output, str) else item.output
            messages.append(ChatMessage(role="tool", content=tuple(_parts(output, param))))
    if calls:
        messages.append(assistant_message((), calls))
    return messages


def _output_format(body: ResponseCreateRequest) -> OutputFormat | None:
    fmt = body.text.format if body.text else None
    if isinstance(fmt, FormatJSONSchema):
        return OutputFormat(
            type="json_schema", schema=fmt.schema_, name=fmt.name, strict=bool(fmt.strict), param="text.format.schema"
        )
    if isinstance(fmt, FormatJSONObject):
        return OutputFormat(type="json_object")
    return None


def to_pipeline_request(
    body: ResponseCreateRequest, items: list[StoredItem], params: list[str], tools: ResponsesTools | None = None
) -> PipelineRequest:
    """Translate a Responses request (its conversation already resolved) into the common request.

    Args:
        body: the request.
        items: the conversation: stored items of ``previous_response_id``'s chain, then ``input``'s.
        params: where each item came from, for errors (``input[2]``, ``previous_response_id``).
        tools: ``body.tools`` flattened (default: flattened here).
    """
    tools = tools or responses_tools(body.tools)
    messages = to_messages(items, params, tools)
    if body.instructions:
        messages.insert(0, ChatMessage.text("system", body.instructions))
    want_logprobs = LOGPROBS_INCLUDE in (body.include or [])
    generation = GenerationRequest(
        messages=tuple(messages),
        sampling=body.to_sampling(),
        max_tokens=body.max_output_tokens,
        stop=conversation.split_stop(body.stop),
        logprobs=(body.top_logprobs or 0) if want_logprobs else None,
    )
    return PipelineRequest(
        endpoint=ENDPOINT,
        request_id=new_id("resp_"),
        model=body.model,
        generation=generation,
        **body.search_hook(),
        tools=tools.specs,
        tool_choice=tool_choice(body, tools),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        output_format=_output_format(body),
        hosted_search=tools.web_search,
    )
