"""The engine's contract: what goes in (a request) and what comes out (events).

A :class:`GenerationRequest` is submitted to the engine; a :class:`GenerationStream` yields
:class:`TextDelta` events and then exactly one :class:`Finished` event. The server, the CLI and
the benchmarks only ever see these types, whatever scheduler runs behind them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class TextPart:
    """Plain text inside a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An already validated and normalised image (RGB, encoded as PNG bytes)."""

    data: bytes
    #: Content hash, used to reuse an image already encoded in this conversation.
    digest: str


ContentPart = TextPart | ImagePart


@dataclass(frozen=True)
class ImageRef:
    """An image named but not loaded yet: a ``data:`` or http(s) URL, or base64 bytes.

    Request translators emit these so that they stay pure (no fetching, no decoding); the
    caller (the request pipeline) loads each into an :class:`ImagePart` before the engine
    renders the conversation, which accepts only loaded images.
    """

    url: str | None = None
    base64: str | None = None
    #: The media type sent with base64 bytes (Anthropic's ``source.media_type``).
    media_type: str | None = None
    #: Where the request holds the image, for errors (``messages[2].content[0]``).
    param: str = "messages"


#: What a message may hold before its images are loaded.
MessagePart = ContentPart | ImageRef


@dataclass(frozen=True)
class ToolCall:
    """A function call the model made (see ``gemma_local.engine.tools`` for the format)."""

    #: ``call_`` + 24 letters/digits; :meth:`id_for` gives the same id with another API's prefix.
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        """The arguments as the JSON string Chat and Responses put in ``arguments``."""
        return json.dumps(self.arguments, ensure_ascii=False)

    def id_for(self, prefix: str) -> str:
        """This call's id under another prefix: ``toolu_`` (Anthropic), ``fc_`` (Responses items)."""
        return prefix + self.id.split("_", 1)[-1]

    def __hash__(self) -> int:  # the arguments dict is not hashable; its JSON text is
        return hash((self.id, self.name, self.arguments_json))


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation, independent of any API's wire format."""

    role: Role
    content: tuple[MessagePart, ...]
    #: Calls an ``assistant`` turn made; rendered back in the call format when the history is replayed.
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def text(cls, role: Role, text: str) -> ChatMessage:
        return cls(role=role, content=(TextPart(text),))

    @property
    def plain_text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class SamplingParams(BaseModel):
    """How the next token is chosen. Validated once here; mapped to llama.cpp in ``sampling``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k.")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0, description="1.0 disables it.")
    repeat_last_n: int = Field(64, ge=0, le=131072, description="Tokens the penalties look back over.")
    seed: int | None = Field(None, description="Same seed + same request = same output.")
    logit_bias: dict[int, float] = Field(default_factory=dict)
    #: A GBNF grammar the output must follow (structured outputs, forced tool calls).
    grammar: str | None = None
    #: Makes ``grammar`` lazy: decoding is free until the output contains this text, and the
    #: grammar then constrains the output from the start of that text on (``auto`` tool calls:
    #: the model may answer in prose, but a call it starts is always well-formed). A start the
    #: grammar cannot continue (the text just after the trigger breaks it) leaves decoding free.
    grammar_trigger: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _trigger_needs_grammar(self) -> SamplingParams:
        if self.grammar_trigger is not None and not self.grammar:
            raise ValueError("grammar_trigger needs a grammar")
        return self


class GenerationRequest(BaseModel):
    """One generation: a conversation (or raw prompt) plus sampling and limits."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    messages: tuple[ChatMessage, ...] = ()
    #: A prompt already in Gemma's format; used instead of ``messages`` when set.
    prompt: str | None = None
    #: Let the conversation end with an assistant turn that the model continues (prefill).
    continue_final_message: bool = False
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    max_tokens: int | None = Field(None, ge=1, description="None: until the context is full.")
    stop: tuple[str, ...] = ()
    #: Number of most likely alternatives to report per token (None: no logprobs at all).
    logprobs: int | None = Field(None, ge=0, le=20)
    request_id: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New output text. Always whole UTF-8 characters; never any part of a stop sequence."""

    text: str
    #: Tokens sampled since the last delta (a delta may span several, or none when text is held back).
    n_tokens: int = 1
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: Prompt tokens whose KV was reused from the prefix cache instead of being computed.
    cached_tokens: int = 0
    #: Speculative decoding: draft tokens verified, and how many of them were kept.
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    queued_s: float = 0.0
    #: From submission to the first sampled token.
    time_to_first_token_s: float = 0.0
    prompt_s: float = 0.0
    generation_s: float = 0.0

    def prompt_tokens_per_s(self, n: int) -> float:
        return n / self.prompt_s if self.prompt_s > 0 else 0.0

    def generation_tokens_per_s(self, n: int) -> float:
        return n / self.generation_s if self.generation_s > 0 else 0.0


@dataclass(frozen=True)
class Finished:
    """The last event of every stream."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings = field(default_factory=Timings)
    #: The stop sequence that ended generation, when one did.
    stop_sequence: str | None = None
    #: Set when ``finish_reason`` is ``error``.
    error: Exception | None = None


Event = TextDelta | Finished


@dataclass(frozen=True)
class GenerationResult:
    """A whole generation, collected from its stream."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    stop_sequence: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
