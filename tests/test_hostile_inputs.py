"""A table of hostile inputs for every API: never a 5xx, never a hang, always the API's own error.

Each row is sent raw (bytes where JSON itself is the attack) to the session's live server, and
the answer must have one of the row's expected statuses; an error must come in the API's
envelope (OpenAI's for Chat Completions and Responses, Anthropic's for Messages). Every few
rows, and at the end, a normal one-token request proves the server still serves.

Cases already covered by ``test_server_errors.py`` for Chat Completions (malformed JSON, an
unknown role, out-of-range sampling numbers, ``n: 0``, bad data-URI images) are run here only
for the other two APIs.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from api_document import openapi_document

MODEL = "gemma-3-27b"
#: No hostile request may take longer than this (a hang is a failure, not a slow pass).
REQUEST_TIMEOUT_S = 90.0
#: A normal request is sent after every this many rows (and once at the end).
CHECK_EVERY = 6
DOCUMENT = openapi_document()


# --- the three APIs -----------------------------------------------------------------------------


def assert_openai_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_anthropic_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body.get("type") == "error", body
    error = body["error"]
    assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str) and error["message"]
    return error


@dataclass(frozen=True)
class Api:
    """How to talk to one API: a valid request around some user content, and its error check."""

    name: str
    path: str
    #: A valid one-token request whose (single) user message has this content.
    request: Callable[[Any], dict[str, Any]]
    #: The same request with ``messages`` (in this API's shape) instead.
    conversation: Callable[[list[dict[str, Any]]], dict[str, Any]]
    #: A user message in this API's shape.
    message: Callable[[str, Any], dict[str, Any]]
    #: An image content part from raw base64 data (as this API takes it).
    image: Callable[[str], dict[str, Any]]
    #: A tools list with one function whose parameters schema is ``schema``.
    tools: Callable[[Any], list[dict[str, Any]]]
    #: The stop-sequences field.
    stop_key: str
    assert_error: Callable[[httpx.Response], dict[str, Any]]

    @property
    def served(self) -> bool:
        return self.path in DOCUMENT["paths"]

    def declares(self, field_name: str) -> bool:
        """Whether the API's documented request body has this field (else it is ignored)."""
        schema = DOCUMENT["paths"][self.path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = schema["$ref"].rsplit("/", 1)[-1]
        return field_name in DOCUMENT["components"]["schemas"][name]["properties"]


def _chat_message(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


CHAT = Api(
    name="chat",
    path="/v1/chat/completions",
    request=lambda content: {"model": MODEL, "max_tokens": 1, "messages": [_chat_message("user", content)]},
    conversation=lambda messages: {"model": MODEL, "max_tokens": 1, "messages": messages},
    message=_chat_message,
    image=lambda data: {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
    tools=lambda schema: [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    stop_key="stop",
    assert_error=assert_openai_error,
)

RESPONSES = Api(
    name="responses",
    path="/v1/responses",
    request=lambda content: {
        "model": MODEL,
        "max_output_tokens": 1,
        "store": False,
        "input": [{"role": "user", "content": content}],
    },
    conversation=lambda messages: {"model": MODEL, "max_output_tokens": 1, "store": False, "input": messages},
    message=_chat_message,
    image=lambda data: {"type": "input_image", "image_url": f"data:image/png;base64,{data}"},
    tools=lambda schema: [{"type": "function", "name": "f", "parameters": schema, "strict": False}],
    stop_key="stop",
    assert_error=assert_openai_error,
)

MESSAGES = Api(
    name="messages",
    path="/v1/messages",
    request=lambda content: {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": content}]},
    conversation=lambda messages: {"model": MODEL, "max_tokens": 1, "messages": messages},
    message=_chat_message,
    image=lambda data: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
    tools=lambda schema: [{"name": "f", "input_schema": schema}],
    stop_key="stop_sequences",
    assert_error=assert_anthropic_error,
)

APIS = (CHAT, RESPONSES, MESSAGES)


# --- the table ------------------------------------------------------------------------------------


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _with(api: Api, content: Any = "Hi", **extra: Any) -> bytes:
    return _json({**api.request(content), **extra})


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


_SVG = (
    b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><text>&xxe;</text></svg>'
)


@dataclass(frozen=True)
class Row:
    """One hostile input: ``body(api)`` sent to each of ``apis``, answered with one of ``expect``."""

    id: str
    body: Callable[[Api], bytes]
    expect: frozenset[int]
    apis: tuple[str, ...] = ("chat", "responses", "messages")
    content_type: str = "application/json"
    #: Per-API expectations that differ from ``expect``.
    overrides: dict[str, frozenset[int]] = field(default_factory=dict)

    def expected(self, api: Api) -> frozenset[int]:
        return self.overrides.get(api.name, self.expect)


OK = frozenset({200})
BAD = frozenset({400})
NOT_FOUND = frozenset({404})
OTHER_APIS = ("responses", "messages")


def _tools_row(row_id: str, schema: Any, *, valid_json_schema: bool) -> Row:
    """Tool schemas that are not JSON Schema: 400 where the API takes tools, ignored where it does not."""

    def body(api: Api) -> bytes:
        key = "tools"
        return _with(api, **{key: api.tools(schema)})

    # An API that does not declare `tools` ignores the key (unknown keys are accepted, `extra_body`).
    overrides = {api.name: OK for api in APIS if api.served and not api.declares("tools")}
    return Row(row_id, body, OK if valid_json_schema else BAD, overrides=overrides)


ROWS: list[Row] = [
    # --- JSON itself ---
    Row("malformed-json", lambda api: _with(api)[:-7], BAD, apis=OTHER_APIS),
    Row("empty-body", lambda api: b"", BAD),
    Row("json-array-body", lambda api: b"[1, 2, 3]", BAD),
    Row("json-string-body", lambda api: b'"hello"', BAD),
    Row("json-null-body", lambda api: b"null", BAD),
    Row("invalid-utf8", lambda api: _with(api, "Hi").replace(b"Hi", b"H\xff\xfe\xfdi"), BAD),
    Row("raw-nul-byte-in-json", lambda api: _with(api, "Hi").replace(b"Hi", b"H\x00i"), BAD),
    Row("bom-prefixed-json", lambda api: b"\xef\xbb\xbf" + _with(api), frozenset({200, 400})),
    Row(
        "deeply-nested-ignored-key",
        lambda api: _with(api).replace(b"{", b'{"zz": ' + _nested(50_000).encode() + b", ", 1),
        BAD,
    ),
    Row("deeply-nested-content", lambda api: _with(api).replace(b'"Hi"', _nested(5_000).encode()), BAD),
    Row("nested-ignored-key-ok-depth", lambda api: _with(api, x_extra=json.loads(_nested(200))), OK),
    Row("wrong-type-model", lambda api: _json({**api.request("Hi"), "model": 12}), BAD),
    # Responses takes a plain string as its input; the other two need a list of messages.
    Row(
        "wrong-type-messages",
        lambda api: _json({**api.request("Hi"), **_container(api, "a string")}),
        BAD,
        overrides={"responses": OK},
    ),
    Row("wrong-type-messages-object", lambda api: _json({**api.request("Hi"), **_container(api, {"a": 1})}), BAD),
    Row("wrong-type-content", lambda api: _with(api, {"text": "Hi"}), BAD),
    Row("numbers-as-strings", lambda api: _json({**api.request("Hi"), **_limit(api, "1")}), BAD),
    Row("bool-as-number", lambda api: _json({**api.request("Hi"), "temperature": True}), BAD),
    # JSON has one number type: 1.0 is the integer 1 (as /openapi.json's "integer" says); 1.5 is not.
    Row("integer-as-whole-float", lambda api: _json({**api.request("Hi"), **_limit(api, 1.0)}), OK),
    Row("integer-as-fraction", lambda api: _json({**api.request("Hi"), **_limit(api, 1.5)}), BAD),
    # --- strings ---
    Row("escaped-nul-in-text", lambda api: _with(api, "a\u0000b\u0000c"), OK),
    Row("lone-surrogate-in-text", lambda api: _with(api, "a\ud800b"), BAD),
    Row("lone-low-surrogate-in-system", lambda api: _json(_with_system(api, "x\udc00y")), BAD),
    Row("control-chars-in-text", lambda api: _with(api, "".join(chr(i) for i in range(32)) + "\u202e\u2066"), OK),
    Row("nul-in-model-id", lambda api: _json({**api.request("Hi"), "model": "gemma\u0000-3-27b"}), NOT_FOUND),
    Row("huge-model-id", lambda api: _json({**api.request("Hi"), "model": "m" * 1_000_000}), NOT_FOUND),
    Row("huge-text", lambda api: _with(api, "sea " * 250_000), BAD),
    Row("huge-text-streamed", lambda api: _with(api, "sea " * 250_000, stream=True), BAD),
    Row("huge-ignored-string", lambda api: _with(api, x_padding="z" * 5_000_000), OK),
    # --- conversations ---
    Row("ten-thousand-messages", lambda api: _json(api.conversation(_alternating(api, 10_000))), BAD),
    Row("unknown-role", lambda api: _json(api.conversation([api.message("wizard", "Hi")])), BAD, apis=OTHER_APIS),
    Row("empty-content", lambda api: _with(api, ""), OK),
    # Anthropic's API refuses a message without content blocks; the OpenAI ones render it empty.
    Row("empty-content-list", lambda api: _with(api, []), OK, overrides={"messages": BAD}),
    # A final assistant turn is a prefill to continue in Anthropic's API, an error in OpenAI's.
    Row(
        "only-assistant",
        lambda api: _json(api.conversation([api.message("assistant", "Hi")])),
        BAD,
        overrides={"messages": OK},
    ),
    Row("no-messages", lambda api: _json(api.conversation([])), BAD, apis=OTHER_APIS),
    Row("role-null", lambda api: _json(api.conversation([api.message(None, "Hi")])), BAD),  # type: ignore[arg-type]
    Row("message-not-object", lambda api: _json(api.conversation(["Hi"])), BAD),
    # --- tools that are not JSON Schema ---
    _tools_row("tool-schema-a-string", "not a schema", valid_json_schema=False),
    _tools_row("tool-schema-a-number", 42, valid_json_schema=False),
    _tools_row("tool-schema-bad-type", {"type": 12, "properties": []}, valid_json_schema=False),
    _tools_row("tool-schema-recursive-ref", {"$ref": "#", "type": "object"}, valid_json_schema=True),
    _tools_row("tool-schema-remote-ref", {"$ref": "http://127.0.0.1:9/evil.json"}, valid_json_schema=True),
    _tools_row(
        "tool-schema-bad-regex",
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "(((("}}},
        valid_json_schema=True,
    ),
    Row("tools-not-a-list", lambda api: _with(api, tools={"name": "f"}), BAD),
    # --- sampling numbers ---
    # Every stop sequence is checked after every token: the pipeline bounds how many and how long.
    Row("stop-16-entries", lambda api: _with(api, **{api.stop_key: [f"stop{i}" for i in range(16)]}), OK),
    Row("stop-1000-entries", lambda api: _with(api, **{api.stop_key: [f"stop{i}" for i in range(1000)]}), BAD),
    Row("stop-256-chars", lambda api: _with(api, **{api.stop_key: ["x" * 256]}), OK),
    Row("stop-huge-entry", lambda api: _with(api, **{api.stop_key: ["x" * 100_000]}), BAD),
    Row("n-1000", lambda api: _with(api, n=1000), BAD, apis=("chat",)),
    Row("n-negative", lambda api: _with(api, n=-1), BAD, apis=("chat",)),
    Row("temperature-nan", lambda api: _with(api).replace(b'"model"', b'"temperature": NaN, "model"'), BAD),
    Row("temperature-infinity", lambda api: _with(api).replace(b'"model"', b'"temperature": Infinity, "model"'), BAD),
    Row("top-p-negative-infinity", lambda api: _with(api).replace(b'"model"', b'"top_p": -Infinity, "model"'), BAD),
    Row("limit-negative", lambda api: _json({**api.request("Hi"), **_limit(api, -5)}), BAD),
    Row("limit-huge-float", lambda api: _json({**api.request("Hi"), **_limit(api, 1e300)}), BAD),
    Row("limit-huge-int", lambda api: _json({**api.request("Hi"), **_limit(api, 2**80)}), BAD),
    Row("seed-huge", lambda api: _with(api, seed=2**80), OK),
    Row("seed-negative", lambda api: _with(api, seed=-(2**63)), OK),
    Row("top-k-huge", lambda api: _with(api, top_k=2**40), OK),
    Row("logit-bias-nan", lambda api: _with(api).replace(b'"model"', b'"logit_bias": {"5": NaN}, "model"'), BAD),
    Row("logit-bias-token-out-of-vocab", lambda api: _with(api, logit_bias={str(2**40): 5}), BAD),
    Row("logit-bias-unicode-digits", lambda api: _with(api, logit_bias={"\u00b2": 5}), BAD),
    Row("top-logprobs-negative", lambda api: _with(api, logprobs=True, top_logprobs=-1), BAD, apis=("chat",)),
    # --- images ---
    Row("image-not-base64", lambda api: _with(api, [api.image("%%%not-base64%%%")]), BAD, apis=OTHER_APIS),
    Row("image-empty", lambda api: _with(api, [api.image("")]), BAD),
    Row("image-base64-of-text", lambda api: _with(api, [api.image(base64.b64encode(b"hello").decode())]), BAD),
    Row("image-svg-with-xxe", lambda api: _with(api, [api.image(base64.b64encode(_SVG).decode())]), BAD),
    Row("image-truncated-png", lambda api: _with(api, [api.image(base64.b64encode(_png()[:40]).decode())]), BAD),
    Row(
        "image-base64-with-garbage-tail",
        lambda api: _with(api, [api.image(base64.b64encode(_png()).decode() + "!!")]),
        BAD,
    ),
    Row("image-file-url", lambda api: _with(api, [_image_url(api, "file:///etc/passwd")]), BAD),
    # --- stored responses (Responses API only) ---
    Row(
        "previous-id-sql",
        lambda api: _with(api, previous_response_id="resp_' OR '1'='1"),
        NOT_FOUND,
        apis=("responses",),
    ),
    Row(
        "previous-id-path",
        lambda api: _with(api, previous_response_id="../../../etc/passwd"),
        NOT_FOUND,
        apis=("responses",),
    ),
    Row(
        "stored-metadata-lone-surrogate",
        lambda api: _json({**api.request("Hi"), "store": True, "metadata": {"k": "\ud800"}}),
        frozenset({200, 400}),
        apis=("responses",),
    ),
    # --- streaming requests fail before the stream starts ---
    Row("bad-number-streamed", lambda api: _with(api, stream=True, temperature=-1), BAD),
    Row(
        "unknown-model-streamed", lambda api: _json({**api.request("Hi"), "stream": True, "model": "gpt-4o"}), NOT_FOUND
    ),
]


def _container(api: Api, value: Any) -> dict[str, Any]:
    return {"input": value} if api.name == "responses" else {"messages": value}


def _with_system(api: Api, text: str) -> dict[str, Any]:
    if api.name == "messages":
        return {**api.request("Hi"), "system": text}
    if api.name == "responses":
        return {**api.request("Hi"), "instructions": text}
    return api.conversation([api.message("system", text), api.message("user", "Hi")])


def _limit(api: Api, value: Any) -> dict[str, Any]:
    return {"max_output_tokens": value} if api.name == "responses" else {"max_tokens": value}


def _alternating(api: Api, count: int) -> list[dict[str, Any]]:
    # Anthropic wants user and assistant turns to alternate; ending on a user turn suits every API.
    return [api.message("user" if (count - i) % 2 else "assistant", "hi") for i in range(count)]


def _image_url(api: Api, url: str) -> dict[str, Any]:
    if api.name == "chat":
        return {"type": "image_url", "image_url": {"url": url}}
    if api.name == "responses":
        return {"type": "input_image", "image_url": url}
    return {"type": "image", "source": {"type": "url", "url": url}}


CASES = [pytest.param(api, row, id=f"{api.name}-{row.id}") for row in ROWS for api in APIS if api.name in row.apis]


# --- running it ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(live_server):
    with httpx.Client(base_url=live_server.base_url, timeout=REQUEST_TIMEOUT_S) as c:
        yield c


def assert_still_serves(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=CHAT.request("Hi"))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 1


_sent = {"count": 0}


@pytest.mark.parametrize(("api", "row"), CASES)
def test_hostile_input(client: httpx.Client, api: Api, row: Row) -> None:
    if not api.served:
        pytest.skip(f"{api.path} is not served by this build")
    response = client.post(api.path, content=row.body(api), headers={"content-type": row.content_type})
    expected = row.expected(api)
    assert response.status_code < 500, f"{row.id}: {response.status_code} {response.text[:500]}"
    assert response.status_code in expected, f"{row.id}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        api.assert_error(response)
    _sent["count"] += 1
    if _sent["count"] % CHECK_EVERY == 0:
        assert_still_serves(client)


def test_still_serves_after_the_table(client: httpx.Client, engine) -> None:
    assert_still_serves(client)
    stats = engine.stats()
    assert stats.queued == 0
