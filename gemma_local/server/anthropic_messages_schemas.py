"""Request and response bodies of the Anthropic Messages API (``/v1/messages``).

Requests ignore unknown keys; ``temperature``, ``top_p`` and ``top_k`` are accepted as body
fields (anthropic 2.x clients send them through ``extra_body``). Replayed ``response.content``
comes back exactly as it was emitted, so every block the server writes is accepted as input.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from gemma_local.server.common_schemas import (
    SamplingFields,
    SearchHookFields,
    ServingFields,
    check_forced_choice_has_tools,
    forced_choice_needs_tools,
    integral_numbers,
    reject_lone_surrogates,
)

# --- request: content blocks -----------------------------------------------------------


class _Request(BaseModel):
    # Strict: JSON types as the schema says them, so what /openapi.json calls invalid is a 400.
    model_config = ConfigDict(extra="ignore", strict=True)


def _str_or_list(value: Any) -> str:
    # Tags the branch a value is, so a bad list reports its own errors (not also "not a string").
    return "str" if isinstance(value, str) else "list"


class TextBlockParam(_Request):
    type: Literal["text"]
    text: str


class Base64ImageSource(_Request):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSource(_Request):
    type: Literal["url"]
    url: str = Field(description="An https URL (fetched only if the server allows remote images).")


class ImageBlockParam(_Request):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]


class ToolUseBlockParam(_Request):
    """A replayed call the model made."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ResultBlock = Annotated[TextBlockParam | ImageBlockParam, Field(discriminator="type")]
ResultContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[ResultBlock], Tag("list")], Discriminator(_str_or_list)
]


class ToolResultBlockParam(_Request):
    """The result of a call, for the model to read."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: ResultContent | None = None
    is_error: bool | None = None


class ThinkingBlockParam(_Request):
    """Replayed thinking (Gemma 3 writes none): accepted and left out of the prompt."""

    type: Literal["thinking", "redacted_thinking"]


class ServerToolBlockParam(_Request):
    """A replayed hosted web search (``server_tool_use``, ``web_search_tool_result``): accepted and
    left out of the prompt — the text that followed it already holds what it found."""

    type: Literal["server_tool_use", "web_search_tool_result"]


ContentBlock = Annotated[
    TextBlockParam
    | ImageBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ThinkingBlockParam
    | ServerToolBlockParam,
    Field(discriminator="type"),
]

MessageContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[ContentBlock], Tag("list")], Discriminator(_str_or_list)
]
SystemContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[TextBlockParam], Tag("list")], Discriminator(_str_or_list)
]

_ALLOWED_BLOCKS = {
    "user": ("text", "image", "tool_result"),
    "assistant": (
        "text",
        "tool_use",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
    ),
    "system": ("text",),
}
_UNSUPPORTED_BLOCKS = {
    "document": "documents (PDF, plain-text sources) are not supported; send their text as text blocks",
    "search_result": "search_result blocks are not supported; send their text as text blocks",
}


class MessageParam(_Request):
    role: Literal["user", "assistant", "system"]
    content: MessageContent

    @model_validator(mode="before")
    @classmethod
    def _blocks(cls, data: Any) -> Any:
        # Name the problem plainly instead of a generic union error.
        if isinstance(data, dict) and isinstance(data.get("content"), list):
            allowed = _ALLOWED_BLOCKS.get(str(data.get("role")), ())
            for i, block in enumerate(data["content"]):
                kind = block.get("type") if isinstance(block, dict) else None
                if not isinstance(kind, str):
                    continue  # not a block at all: the union's own error says so
                if kind in _UNSUPPORTED_BLOCKS:
                    raise ValueError(f"content[{i}]: {_UNSUPPORTED_BLOCKS[kind]}")
                if allowed and kind not in allowed:
                    raise ValueError(
                        f"content[{i}]: {kind!r} blocks are not allowed in {data.get('role')} messages; "
                        f"use {', '.join(allowed)}"
                    )
        return data


# --- request: tools and options --------------------------------------------------------


class ToolParam(_Request):
    """A client tool (``defer_loading`` ones are not offered to the model: they are announced
    for a tool search, which this server does not run)."""

    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="JSON Schema of the input object.")
    strict: bool | None = None
    defer_loading: bool | None = None


#: Anthropic's hosted web search: every version is answered by gemma-local's search hook.
WEB_SEARCH_TOOL_PREFIX = "web_search_"


class WebSearchToolParam(_Request):
    """The hosted web search, served by the search hook (local index and ZIM first)."""

    type: str = Field(pattern=r"^web_search_\d{8}$", description="web_search_20250305 or a later version.")
    name: Literal["web_search"] = "web_search"
    max_uses: int | None = Field(None, ge=1, description="Searches one answer may run (default 3).")
    allowed_domains: list[str] | None = None
    blocked_domains: list[str] | None = None
    user_location: dict[str, Any] | None = None


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "web_search" if isinstance(kind, str) and kind.startswith(WEB_SEARCH_TOOL_PREFIX) else "custom"


AnyToolParam = Annotated[
    Annotated[ToolParam, Tag("custom")] | Annotated[WebSearchToolParam, Tag("web_search")],
    Discriminator(_tool_kind),
]


class ToolChoiceAuto(_Request):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Request):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Request):
    type: Literal["none"]


class ToolChoiceTool(_Request):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceNone | ToolChoiceTool, Field(discriminator="type")
]


class JSONOutputFormat(_Request):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True, serialize_by_alias=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the answer must follow.")


class OutputConfig(_Request):
    format: JSONOutputFormat | None = None


class _MessagesBase(_Request):
    model_config = ConfigDict(
        json_schema_extra=forced_choice_needs_tools({"properties": {"type": {"enum": ["any", "tool"]}}})
    )

    model: str = Field(description="A model id that /v1/models lists, or an alias; gemma-3-27b is always accepted.")
    messages: list[MessageParam] = Field(min_length=1)
    system: SystemContent | None = Field(None, description="Instructions, as text or text blocks.")
    tools: list[AnyToolParam] | None = Field(
        None, description="Client tools; the hosted web_search_* tool runs on the search hook."
    )
    tool_choice: ToolChoiceParam | None = None
    output_config: OutputConfig | None = None

    _valid_text = model_validator(mode="before")(reject_lone_surrogates)
    _integral = model_validator(mode="before")(integral_numbers("max_tokens", "top_k", "seed"))

    @field_validator("tools", mode="before")
    @classmethod
    def _known_tool_types(cls, value: Any) -> Any:
        # Server tools this server cannot run are named (type and index), never silently dropped.
        if isinstance(value, list):
            for i, tool in enumerate(value):
                kind = tool.get("type") if isinstance(tool, dict) else None
                if isinstance(kind, str) and kind != "custom" and not kind.startswith(WEB_SEARCH_TOOL_PREFIX):
                    raise ValueError(
                        f"tools[{i}] has type {kind!r}, a server tool this server cannot run; it serves "
                        "client tools and web_search"
                    )
        return value

    @model_validator(mode="after")
    def _tools_for_forced_choice(self) -> _MessagesBase:
        forced = isinstance(self.tool_choice, ToolChoiceAny | ToolChoiceTool)
        check_forced_choice_has_tools(forced, self.tools)
        return self


class MessagesRequest(SamplingFields, SearchHookFields, ServingFields, _MessagesBase):
    """``POST /v1/messages``. A last assistant message is continued (prefill)."""

    max_tokens: int = Field(
        ge=1,
        le=1_000_000,
        description="Output tokens; more than the server's cap (8192 by default) is capped, not refused "
        "(Claude Code asks for 32000, and more when it retries an answer cut at max_tokens).",
    )
    stop_sequences: list[str] | None = Field(None, description="Generation stops at the first of these.")
    stream: bool | None = False
    metadata: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    thinking: dict[str, Any] | None = Field(None, description="Accepted and ignored (Gemma 3 does not think aloud).")
    service_tier: str | None = Field(None, description="Accepted and ignored.")
    # gemma-local extensions (also the hosted API's own options).


class CountTokensRequest(_MessagesBase):
    """``POST /v1/messages/count_tokens``: the prompt a Messages request would have, counted."""


# --- response ------------------------------------------------------------------------------


class WebSearchCitation(BaseModel):
    """Where a text block cites a hosted search's result (``[n]`` in the text)."""

    type: Literal["web_search_result_location"] = "web_search_result_location"
    url: str
    title: str | None = None
    #: Opaque to clients (they send it back unread): here, the source's number in its search.
    encrypted_index: str
    cited_text: str


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str
    citations: list[WebSearchCitation] | None = Field(None, exclude_if=lambda v: v is None)


class ServerToolUseBlock(BaseModel):
    """The hosted web search the model ran (the server ran it: the client has nothing to do)."""

    type: Literal["server_tool_use"] = "server_tool_use"
    id: str
    name: Literal["web_search"] = "web_search"
    input: dict[str, Any]


class WebSearchResultBlock(BaseModel):
    type: Literal["web_search_result"] = "web_search_result"
    url: str
    title: str
    #: Opaque to clients: here, the extract the model was given, base64-encoded.
    encrypted_content: str
    page_age: str | None = None


class WebSearchToolResultBlock(BaseModel):
    type: Literal["web_search_tool_result"] = "web_search_tool_result"
    tool_use_id: str
    content: list[WebSearchResultBlock]


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ResponseBlock = Annotated[
    TextBlock | ToolUseBlock | ServerToolUseBlock | WebSearchToolResultBlock, Field(discriminator="type")
]

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageUsage(BaseModel):
    """Anthropic's accounting: ``input_tokens`` excludes the prompt tokens read from the cache."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    """The answer (also the ``message`` of ``message_start``, with no content yet)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ResponseBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage
    #: gemma-local extension, with ``web_search_linkup``: provider, sources found/used, note.
    search: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)


class TokenCount(BaseModel):
    input_tokens: int


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    """Every error on ``/v1/messages`` routes (and the ``data`` of a mid-stream ``error`` event)."""

    type: Literal["error"] = "error"
    error: ErrorDetail


# --- stream events (``event: <type>`` + ``data: <one of these>``) -------------------------------


class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ResponseBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class CitationsDelta(BaseModel):
    type: Literal["citations_delta"] = "citations_delta"
    citation: WebSearchCitation


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJSONDelta | CitationsDelta, Field(discriminator="type")]


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class StopDelta(BaseModel):
    stop_reason: StopReason
    stop_sequence: str | None = None


class MessageDeltaEvent(BaseModel):
    """The end of the message: why it stopped, and the whole usage (``input_tokens`` included)."""

    type: Literal["message_delta"] = "message_delta"
    delta: StopDelta
    usage: MessageUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(BaseModel):
    """Sent once after the first block starts, and whenever the stream has been quiet a while."""

    type: Literal["ping"] = "ping"


StreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
)
#: Every event a streamed message sends (and ``event: error`` with an :class:`ErrorResponse`).
STREAM_EVENTS = (
    MessageStartEvent,
    ContentBlockStartEvent,
    ContentBlockDeltaEvent,
    ContentBlockStopEvent,
    MessageDeltaEvent,
    MessageStopEvent,
    PingEvent,
)
