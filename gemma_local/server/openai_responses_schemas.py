"""Request and response bodies of the OpenAI Responses API (``/v1/responses``).

Requests ignore unknown keys (SDKs inject any key through ``extra_body``). Clients replay
earlier output as input (``input += response.output``), so the input item models accept
everything the output models emit, nulls included. Every item the server keeps (the input
items of a stored response) is normalised into the ``Stored*`` models, which are also what
``GET /v1/responses/{id}/input_items`` lists.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from gemma_local.server.common_schemas import (
    SamplingFields,
    SearchHookFields,
    ServingFields,
    check_forced_choice_has_tools,
    forced_choice_needs_tools,
    integral_numbers,
    reject_lone_surrogates,
)

ImageDetail = Literal["auto", "low", "high", "original"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]

# --- request: content parts ---------------------------------------------------------------


class _Request(BaseModel):
    # Strict: JSON types as the schema says them, so what /openapi.json calls invalid is a 400.
    model_config = ConfigDict(extra="ignore", strict=True)


class InputTextPart(_Request):
    type: Literal["input_text"]
    text: str


class InputImagePart(_Request):
    type: Literal["input_image"]
    image_url: str = Field(
        description="An https URL or a data:image/...;base64,... URL (there is no Files API: file_id is not supported)."
    )
    detail: ImageDetail | None = None


class OutputTextPart(_Request):
    """Replayed model text (``response.output[i].content[j]``)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class RefusalPart(_Request):
    type: Literal["refusal"]
    refusal: str


_UNSUPPORTED_PARTS = {"input_file": "file inputs", "input_audio": "audio input"}


def _check_parts(value: Any, allowed: tuple[str, ...]) -> Any:
    """Name unsupported part types plainly instead of a generic union error."""
    if isinstance(value, list):
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                continue  # not a part at all: the union's own error says so
            if kind in _UNSUPPORTED_PARTS:
                raise ValueError(f"content[{i}]: {_UNSUPPORTED_PARTS[kind]} are not supported by Gemma 3")
            if kind not in allowed:
                raise ValueError(f"content[{i}]: {kind!r} parts are not allowed here; use {' or '.join(allowed)}")
    return value


def _str_or_list(value: Any) -> str:
    # Tags the branch a value is, so a bad list reports its own errors (not also "not a string").
    return "str" if isinstance(value, str) else "list"


UserPart = Annotated[InputTextPart | InputImagePart, Field(discriminator="type")]
AssistantPart = Annotated[OutputTextPart | RefusalPart | InputTextPart, Field(discriminator="type")]


UserContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[UserPart], Tag("list")], Discriminator(_str_or_list)
]
AssistantContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[AssistantPart], Tag("list")], Discriminator(_str_or_list)
]
InstructionContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[InputTextPart], Tag("list")], Discriminator(_str_or_list)
]
ToolOutput = UserContent

# --- request: input items -----------------------------------------------------------------


class MessageItemBase(_Request):
    """A message; ``type`` may be left out. Which parts it may hold depends on its role."""

    type: Literal["message"] = "message"
    id: str | None = None
    status: ItemStatus | None = None

    @field_validator("content", mode="before", check_fields=False)
    @classmethod
    def _parts(cls, value: Any) -> Any:
        # Name unsupported part types plainly (the schema, per role, says which are allowed).
        return _check_parts(value, _ALLOWED_PARTS[cls.__name__])


class UserMessageItem(MessageItemBase):
    role: Literal["user"]
    content: UserContent


class AssistantMessageItem(MessageItemBase):
    """Replayed model output (``response.output`` messages)."""

    role: Literal["assistant"]
    content: AssistantContent


class InstructionMessageItem(MessageItemBase):
    role: Literal["system", "developer"]
    content: InstructionContent


_ALLOWED_PARTS = {
    "UserMessageItem": ("input_text", "input_image"),
    "AssistantMessageItem": ("output_text", "refusal", "input_text"),
    "InstructionMessageItem": ("input_text",),
}

MessageItemParam = Annotated[
    UserMessageItem | AssistantMessageItem | InstructionMessageItem, Field(discriminator="role")
]


class FunctionCallItemParam(_Request):
    """A replayed function call (``response.output`` item)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = Field(description="The arguments as a JSON string.")
    id: str | None = None
    status: ItemStatus | None = None
    namespace: str | None = Field(None, description="The namespace tool the function belongs to.")


class CustomToolCallItemParam(_Request):
    """A replayed call of a custom (free-form input) tool."""

    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str
    id: str | None = None
    status: ItemStatus | None = None
    namespace: str | None = None


class WebSearchCallItemParam(_Request):
    """A replayed hosted web search: accepted; its results are already in the answer that followed."""

    type: Literal["web_search_call"]
    id: str | None = None
    status: str | None = None
    action: dict[str, Any] | None = None


class FunctionCallOutputItemParam(_Request):
    """The result of a function call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str | None = None
    output: ToolOutput
    id: str | None = None
    status: ItemStatus | None = None

    @field_validator("output", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        return _check_parts(value, ("input_text", "input_image"))


class CustomToolCallOutputItemParam(FunctionCallOutputItemParam):
    """The result of a custom tool call."""

    type: Literal["custom_tool_call_output"]  # type: ignore[assignment]


class ReasoningItemParam(_Request):
    """Replayed reasoning (Gemma 3 produces none): accepted and left out of the prompt."""

    type: Literal["reasoning"]


def _item_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "message"))
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItemParam, Tag("message")]
    | Annotated[FunctionCallItemParam, Tag("function_call")]
    | Annotated[FunctionCallOutputItemParam, Tag("function_call_output")]
    | Annotated[CustomToolCallItemParam, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputItemParam, Tag("custom_tool_call_output")]
    | Annotated[WebSearchCallItemParam, Tag("web_search_call")]
    | Annotated[ReasoningItemParam, Tag("reasoning")],
    Discriminator(_item_type),
]

Input = Annotated[Annotated[str, Tag("str")] | Annotated[list[InputItem], Tag("list")], Discriminator(_str_or_list)]

# --- request: tools and formats -----------------------------------------------------------

_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionToolParam(_Request):
    """A function tool, in the Responses API's flat form (no nested ``function``)."""

    type: Literal["function"] = "function"
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments object.")
    strict: bool | None = None


class CustomToolParam(_Request):
    """A tool whose input is free-form text (optionally a grammar's language), not JSON."""

    type: Literal["custom"]
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    format: dict[str, Any] | None = Field(
        None, description="{type: text} or {type: grammar, syntax: regex|lark, definition}: regex is enforced."
    )


def _tool_type(value: Any) -> str:
    kind = value.get("type", "function") if isinstance(value, dict) else getattr(value, "type", "function")
    return "web_search" if kind in WEB_SEARCH_TOOL_TYPES else str(kind)


class NamespaceToolParam(_Request):
    """A group of function (and custom) tools; a call names the inner function and the namespace."""

    type: Literal["namespace"]
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    tools: list[
        Annotated[
            Annotated[FunctionToolParam, Tag("function")] | Annotated[CustomToolParam, Tag("custom")],
            Discriminator(_tool_type),
        ]
    ] = Field(min_length=1)


#: Hosted web search, answered by gemma-local's search hook (local index and ZIM first).
WEB_SEARCH_TOOL_TYPES = ("web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11")


class WebSearchToolParam(_Request):
    """Hosted web search, served by the search hook (online providers only if configured and allowed)."""

    type: Literal["web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"]
    external_web_access: bool | None = Field(None, description="false: offline providers only (local index, ZIM).")
    filters: dict[str, Any] | None = None
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: dict[str, Any] | None = None


ToolParam = Annotated[
    Annotated[FunctionToolParam, Tag("function")]
    | Annotated[NamespaceToolParam, Tag("namespace")]
    | Annotated[CustomToolParam, Tag("custom")]
    | Annotated[WebSearchToolParam, Tag("web_search")],
    Discriminator(_tool_type),
]
#: Tool types the server runs (hosted ones through the search hook); any other is a 400.
SUPPORTED_TOOL_TYPES = ("function", "namespace", "custom", *WEB_SEARCH_TOOL_TYPES)


class ToolChoiceFunction(_Request):
    type: Literal["function"]
    name: str


class ToolChoiceCustom(_Request):
    type: Literal["custom"]
    name: str


class ToolChoiceHosted(_Request):
    """Use the hosted web search (the only hosted tool served here)."""

    type: Literal["web_search_preview", "web_search_preview_2025_03_11"]


def _choice_type(value: Any) -> str:
    if isinstance(value, str):
        return "str"
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return str(kind) if kind in ("function", "custom") else "hosted"


ToolChoiceParam = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")]
    | Annotated[ToolChoiceFunction, Tag("function")]
    | Annotated[ToolChoiceCustom, Tag("custom")]
    | Annotated[ToolChoiceHosted, Tag("hosted")],
    Discriminator(_choice_type),
]


class FormatText(_Request):
    type: Literal["text"]


class FormatJSONObject(_Request):
    type: Literal["json_object"]


class FormatJSONSchema(_Request):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True, serialize_by_alias=True)

    type: Literal["json_schema"]
    name: str = Field(pattern=_TOOL_NAME)
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the output must follow.")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")]


class TextConfig(_Request):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


# --- request ----------------------------------------------------------------------------


class ResponseCreateRequest(SamplingFields, SearchHookFields, ServingFields, _Request):
    """``POST /v1/responses``. Omitted or null options take the hosted API's defaults."""

    model_config = ConfigDict(
        json_schema_extra=forced_choice_needs_tools({"anyOf": [{"const": "required"}, {"type": "object"}]})
    )

    model: str = Field(description="A model id that /v1/models lists, or an alias; gemma-3-27b is always accepted.")
    input: Input = Field(description="A user message, or a list of input items.")
    instructions: str | None = Field(None, description="A system message for this response (not inherited).")
    previous_response_id: str | None = Field(None, description="Continue from a stored response.")
    store: bool | None = Field(True, description="Keep the response so that it can be continued or retrieved.")
    stream: bool | None = False
    max_output_tokens: int | None = Field(
        None, ge=1, le=65536, description="Output tokens (default 4096; capped by the server, 8192)."
    )
    text: TextConfig | None = None
    tools: list[ToolParam] | None = Field(
        None, description="function, namespace and custom tools; hosted web_search runs on the search hook."
    )
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    include: list[str] | None = Field(None, description="`message.output_text.logprobs` adds token logprobs.")
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning: dict[str, Any] | None = Field(None, description="Accepted and ignored (Gemma 3 does not reason).")
    background: Literal[False] | None = Field(None, description="Only false: responses are generated at once.")
    # Refused rather than ignored: a client relying on it would silently lose its context.
    conversation: None = Field(None, description="Not supported (no Conversations API): use previous_response_id.")
    # gemma-local extensions (also the hosted API's own options, through extra_body).
    stop: str | list[str] | None = Field(
        None, description="Extension (the hosted API's): stop sequences, an array or a comma-separated string."
    )
    _valid_text = model_validator(mode="before")(reject_lone_surrogates)
    _integral = model_validator(mode="before")(integral_numbers("max_output_tokens", "top_logprobs", "seed", "top_k"))

    @field_validator("background", mode="before")
    @classmethod
    def _foreground(cls, value: Any) -> Any:
        # Literal[False] alone would take 0 (0 == False in Python); the schema says boolean false.
        if value is not None and value is not False:
            raise ValueError("only false: background responses are not supported (use stream: true)")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _known_tool_types(cls, value: Any) -> Any:
        # Named plainly (type and index) rather than as a failed union; never silently dropped.
        if isinstance(value, list):
            for i, tool in enumerate(value):
                kind = tool.get("type", "function") if isinstance(tool, dict) else None
                if isinstance(kind, str) and kind not in SUPPORTED_TOOL_TYPES:
                    raise ValueError(
                        f"tools[{i}] has type {kind!r}, a hosted tool this server cannot run; it serves "
                        f"{', '.join(SUPPORTED_TOOL_TYPES)}"
                    )
        return value

    @model_validator(mode="after")
    def _tools_for_forced_choice(self) -> ResponseCreateRequest:
        check_forced_choice_has_tools(self.tool_choice not in (None, "none", "auto"), self.tools)
        return self


# --- response ---------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class Logprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Logprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    """A model message: in ``output``, and in stored input items when replayed."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class FunctionCall(BaseModel):
    """A function call the model made: in ``output``, and in stored input items."""

    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus
    #: The namespace tool the function belongs to (left out for a top-level function).
    namespace: str | None = Field(None, exclude_if=lambda v: v is None)


class CustomToolCall(BaseModel):
    """A call of a custom tool: its input is the raw text the model wrote."""

    id: str
    type: Literal["custom_tool_call"] = "custom_tool_call"
    call_id: str
    name: str
    input: str
    status: ItemStatus = "completed"
    namespace: str | None = Field(None, exclude_if=lambda v: v is None)


class WebSearchSource(BaseModel):
    type: Literal["url"] = "url"
    url: str


class WebSearchAction(BaseModel):
    type: Literal["search"] = "search"
    query: str | None = None
    sources: list[WebSearchSource] | None = None


class WebSearchCall(BaseModel):
    """A hosted web search the model ran (through gemma-local's search hook)."""

    id: str
    type: Literal["web_search_call"] = "web_search_call"
    status: Literal["in_progress", "searching", "completed", "failed", "incomplete"] = "completed"
    action: WebSearchAction


OutputItem = Annotated[OutputMessage | FunctionCall | CustomToolCall | WebSearchCall, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class TextConfigOut(BaseModel):
    format: FormatText | FormatJSONObject | FormatJSONSchema = Field(default_factory=lambda: FormatText(type="text"))


class Response(BaseModel):
    """A response object: returned, streamed in lifecycle events, stored, retrieved."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float
    top_p: float
    text: TextConfigOut = Field(default_factory=TextConfigOut)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceCustom | ToolChoiceHosted = "auto"
    tools: list[ToolParam] = Field(default_factory=list)
    top_logprobs: int | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


# --- stored input items (and GET /v1/responses/{id}/input_items) ---------------------------


class StoredInputText(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class StoredInputImage(BaseModel):
    type: Literal["input_image"] = "input_image"
    image_url: str
    detail: ImageDetail = "auto"


StoredInputPart = Annotated[StoredInputText | StoredInputImage, Field(discriminator="type")]


class StoredInputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer"]
    status: ItemStatus = "completed"
    content: list[StoredInputPart]


class StoredFunctionCallOutput(BaseModel):
    id: str
    type: Literal["function_call_output"] = "function_call_output"
    call_id: str | None
    output: str | list[StoredInputPart]
    status: ItemStatus = "completed"


class StoredCustomToolCallOutput(StoredFunctionCallOutput):
    type: Literal["custom_tool_call_output"] = "custom_tool_call_output"  # type: ignore[assignment]


def _stored_type(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return "assistant" if kind == "message" and role == "assistant" else str(kind)


StoredItem = Annotated[
    Annotated[StoredInputMessage, Tag("message")]
    | Annotated[OutputMessage, Tag("assistant")]
    | Annotated[FunctionCall, Tag("function_call")]
    | Annotated[StoredFunctionCallOutput, Tag("function_call_output")]
    | Annotated[CustomToolCall, Tag("custom_tool_call")]
    | Annotated[StoredCustomToolCallOutput, Tag("custom_tool_call_output")]
    | Annotated[WebSearchCall, Tag("web_search_call")],
    Discriminator(_stored_type),
]


class InputItemList(BaseModel):
    """``GET /v1/responses/{id}/input_items``: one page of the items the response was given."""

    object: Literal["list"] = "list"
    data: list[StoredItem]
    first_id: str
    last_id: str
    has_more: bool


# --- stream events (``event: <type>`` + ``data: <one of these>``) -------------------------------


class _Event(BaseModel):
    sequence_number: int


class ResponseLifecycleEvent(_Event):
    """First (``created``, ``in_progress``) and last (``completed``, ``incomplete``, ``failed``)."""

    type: Literal[
        "response.created", "response.in_progress", "response.completed", "response.incomplete", "response.failed"
    ]
    response: Response


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Logprob] = Field(default_factory=list)


class TextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Logprob] = Field(default_factory=list)


class ArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    arguments: str


class CustomInputDeltaEvent(_Event):
    type: Literal["response.custom_tool_call_input.delta"] = "response.custom_tool_call_input.delta"
    item_id: str
    output_index: int
    delta: str


class CustomInputDoneEvent(_Event):
    type: Literal["response.custom_tool_call_input.done"] = "response.custom_tool_call_input.done"
    item_id: str
    output_index: int
    input: str


class WebSearchCallEvent(_Event):
    type: Literal[
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
    ]
    item_id: str
    output_index: int


StreamEvent = (
    ResponseLifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | CustomInputDeltaEvent
    | CustomInputDoneEvent
    | WebSearchCallEvent
)
#: Every event a streamed response sends.
STREAM_EVENTS = (
    ResponseLifecycleEvent,
    OutputItemEvent,
    ContentPartEvent,
    TextDeltaEvent,
    TextDoneEvent,
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    CustomInputDeltaEvent,
    CustomInputDoneEvent,
    WebSearchCallEvent,
)
