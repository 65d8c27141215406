"""Request and response bodies of ``POST /v1/chat/completions`` (OpenAI's wire format).

Requests ignore unknown keys (SDKs inject any key through ``extra_body``). Optional numbers
accept ``null`` as "use the default". The defaults and ranges are the hosted Gemma 3 API's.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetJsonSchemaHandler,
    Tag,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from gemma_local.server.common_schemas import (
    SamplingFields,
    SearchHookFields,
    ServingFields,
    check_forced_choice_has_tools,
    forced_choice_needs_tools,
    str_or_dict,
)

# --- request ---------------------------------------------------------------------------------


class _Request(BaseModel):
    # Strict: JSON types as the schema says them (no "0.5" or false for a number, no 1 for a
    # boolean), so what /openapi.json calls invalid is refused with a 400, never guessed at.
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImageURL(_Request):
    url: str = Field(description="An https URL or a data:image/...;base64,... URL.")
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


class RefusalPart(_Request):
    type: Literal["refusal"]
    refusal: str


#: Which parts a role may send is checked by ``ChatMessageParam`` (images: user only).
ContentPart = Annotated[TextPart | ImageURLPart | RefusalPart, Field(discriminator="type")]

_UNSUPPORTED_PARTS = {"input_audio": "audio input", "file": "file inputs"}


def _check_part_types(value: Any, allowed: tuple[str, ...]) -> Any:
    """Name unsupported part types plainly instead of a generic union error."""
    if isinstance(value, list):
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(kind, str):
                continue  # not a part at all (a dict as `type` is unhashable): the union's own error says so
            if kind in _UNSUPPORTED_PARTS:
                raise ValueError(f"content[{i}]: {_UNSUPPORTED_PARTS[kind]} is not supported by Gemma 3")
            if kind not in allowed:
                raise ValueError(f"content[{i}]: {kind!r} parts are not allowed here; use {' or '.join(allowed)}")
    return value


class FunctionCall(_Request):
    name: str
    arguments: str = Field(description="The arguments as a JSON string.")


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageParam(_Request):
    """One message. ``role`` decides which fields apply."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="Assistant messages: the calls it made.")
    tool_call_id: str | None = Field(None, description="Tool messages: the call this answers.")
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        allowed = ("text", "refusal") if role == "assistant" else ("text", "image_url") if role == "user" else ("text",)
        return _check_part_types(value, allowed)

    @model_validator(mode="after")
    def _by_role(self) -> ChatMessageParam:
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.refusal is not None)):
            raise ValueError(f"{self.role} messages need content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("tool messages need tool_call_id")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Document what ``_parts`` and ``_by_role`` enforce: one variant per role, so /openapi.json
        describes exactly the messages this server accepts."""
        json_schema = handler(core_schema)
        schema = handler.resolve_ref_schema(json_schema)
        props = schema["properties"]
        array = next(s for s in props["content"]["anyOf"] if s.get("type") == "array")
        refs: dict[str, str] = array["items"]["discriminator"]["mapping"]

        def content(*tags: str) -> dict[str, Any]:
            items = {
                "oneOf": [{"$ref": refs[t]} for t in tags],
                "discriminator": {"propertyName": "type", "mapping": {t: refs[t] for t in tags}},
            }
            return {"anyOf": [{"type": "string"}, {"type": "array", "items": items}], "title": "Content"}

        def variant(roles: list[str], fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
            return {
                "type": "object",
                "title": f"{roles[0].capitalize()}Message",
                "properties": {"role": {"type": "string", "enum": roles}, "name": props["name"], **fields},
                "required": ["role", *required],
            }

        assistant = variant(
            ["assistant"],
            {
                "content": {"anyOf": [*content("text", "refusal")["anyOf"], {"type": "null"}], "title": "Content"},
                "tool_calls": props["tool_calls"],
                "refusal": props["refusal"],
            },
            [],
        )
        # Content may be left out (or null) only when the turn made tool calls or refused.
        assistant["anyOf"] = [
            {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
            {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
            {"required": ["refusal"], "properties": {"refusal": {"type": "string"}}},
        ]
        tool_call_id = {**props["tool_call_id"], "type": "string", "minLength": 1}
        tool_call_id.pop("anyOf", None)
        tool_call_id.pop("default", None)
        variants = [
            variant(["system", "developer"], {"content": content("text")}, ["content"]),
            variant(["user"], {"content": content("text", "image_url")}, ["content"]),
            assistant,
            variant(["tool"], {"content": content("text"), "tool_call_id": tool_call_id}, ["content", "tool_call_id"]),
        ]
        description = schema.get("description")
        schema.clear()
        schema.update({"title": "ChatMessageParam", "oneOf": variants})
        if description:
            schema["description"] = description
        return json_schema


def _integral(value: Any) -> Any:
    # JSON has one number type: 2.0 is the integer 2 to JSON Schema (and so to /openapi.json);
    # strict mode would refuse it. Anything else (true, "2", 2.5) is still refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Makes an integer parameter also take a JSON number with no fractional part. It goes last in
#: ``Annotated[int, Field(ge=1), WHOLE]``: bounds after it (or on the ``| None`` union) would reach
#: the JSON schema as unknown ``ge``/``le`` keys instead of ``minimum``/``maximum``.
WHOLE = BeforeValidator(_integral)


#: OpenAI's rule for function and response-format names.
_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionDefinition(_Request):
    name: str = Field(pattern=_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="JSON Schema of the arguments object; left out: a function without arguments."
    )
    strict: bool | None = Field(None, description="Enforce OpenAI's strict-schema rules on the arguments.")


class ChatTool(_Request):
    """A function the model may call."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoiceParam(_Request):
    """Call this function (decoding is constrained so the call is well-formed and valid)."""

    type: Literal["function"]
    function: NamedFunction


ToolChoiceParam = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")] | Annotated[NamedToolChoiceParam, Tag("dict")],
    Discriminator(str_or_dict),
]


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJSONObject(_Request):
    """Any JSON object."""

    type: Literal["json_object"]


class JSONSchemaFormat(_Request):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True, serialize_by_alias=True)

    name: str = Field(pattern=_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="The JSON Schema the answer must follow (left out: any JSON)."
    )
    strict: bool | None = Field(None, description="Enforce OpenAI's strict-schema rules on the schema.")


class ResponseFormatJSONSchema(_Request):
    """JSON valid against ``json_schema.schema``."""

    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")
]


class StreamOptions(_Request):
    include_usage: bool | None = Field(None, description="Send a last chunk with the usage of the whole request.")
    include_obfuscation: bool | None = Field(None, description="Accepted; there is no obfuscation padding.")


class ChatCompletionRequest(SamplingFields, SearchHookFields, ServingFields, _Request):
    """``POST /v1/chat/completions``. Omitted or null options take the hosted API's defaults."""

    model_config = ConfigDict(
        # What the validators below enforce, said in the schema too: top_logprobs needs
        # logprobs: true, a forced tool_choice needs tools.
        json_schema_extra={
            "allOf": [
                {
                    "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
                    "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
                },
                forced_choice_needs_tools({"anyOf": [{"const": "required"}, {"type": "object"}]}),
            ]
        }
    )

    model: str = Field(description="A model id that /v1/models lists, or an alias; gemma-3-27b is always accepted.")
    messages: list[ChatMessageParam] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=128), WHOLE] | None = Field(1, description="Choices to generate.")
    stop: str | list[str] | None = Field(
        None, description="Stop sequences: an array, or a string split on commas (as the hosted API does)."
    )
    max_tokens: Annotated[int, Field(ge=1, le=65536), WHOLE] | None = Field(
        None, description="Output tokens per choice (default 4096; capped by the server, 8192)."
    )
    max_completion_tokens: Annotated[int, Field(ge=1, le=65536), WHOLE] | None = Field(
        None, description="Preferred alias of max_tokens."
    )
    logprobs: bool | None = Field(False, description="Return the log probability of each output token.")
    top_logprobs: Annotated[int, Field(ge=0, le=20), WHOLE] | None = Field(
        None, description="Most likely alternatives per token."
    )
    user: str | None = None
    tools: list[ChatTool] | None = Field(None, description="Functions the model may call.")
    tool_choice: ToolChoiceParam | None = Field(
        None, description="none, auto (the default with tools), required, or a named function."
    )
    parallel_tool_calls: bool | None = Field(None, description="Allow several calls in one answer (default true).")
    response_format: ResponseFormat | None = Field(
        None, description="Structured output: json_object, or json_schema (grammar-constrained decoding)."
    )
    # gemma-local extensions (llama.cpp sampling knobs the hosted API does not have).
    continue_final_message: bool | None = Field(
        False, description="Extension: continue a final assistant message instead of answering after it."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_legacy_functions(cls, data: Any) -> Any:
        # Ignoring them would answer as if no function had been offered.
        if isinstance(data, dict) and (data.get("functions") is not None or data.get("function_call") is not None):
            raise ValueError("functions and function_call are deprecated and not supported: send tools and tool_choice")
        return data

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        check_forced_choice_has_tools(self.tool_choice not in (None, "none", "auto"), self.tools)
        return self


# --- response ----------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    #: None when the answer is only function calls.
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletion(BaseModel):
    """The non-streaming answer."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: CompletionUsage
    #: gemma-local extension, with ``web_search_linkup``: provider, sources found/used, note.
    search: dict[str, Any] | None = None


class ChunkFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ChunkToolCall(BaseModel):
    """A piece of call ``index``: its first piece has the id and name, later ones more arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChunkFunction


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None

    @field_serializer("delta")
    def _only_set(self, delta: ChunkDelta) -> dict[str, Any]:
        # The SDK's stream helper concatenates every field it sees, so send only what is new.
        return delta.model_dump(exclude_none=True)


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    #: gemma-local extension on the first chunk, with ``web_search_linkup`` (see ChatCompletion).
    search: dict[str, Any] | None = None
