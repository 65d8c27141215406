"""Schemathesis against the server's own OpenAPI document: no 5xx, no hang, every answer documented.

Every operation in ``/openapi.json`` is fuzzed with schema-valid and schema-violating inputs
(schemathesis' positive and negative modes) against the session's real server, and each answer
goes through schemathesis' checks: not a server error, a documented status code, content type,
headers and body schema, schema-violating data rejected, schema-valid data accepted.

Generations are kept short (``max_tokens`` and ``n`` are clamped in valid requests only, so a
schema-violating value stays violating) so the whole file runs in well under two minutes on a
busy two-core machine.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from api_document import openapi_document
from conftest import TEST_API_KEY
from hypothesis import HealthCheck, Phase, settings
from jsonschema import Draft202012Validator
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

#: Examples per operation: enough to reach every field of a request body, small enough for CI.
MAX_EXAMPLES = 15
HOSTED_MODEL = "gemma-3-27b"


DOCUMENT = openapi_document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
#: Output-limit fields, in the order they are added to requests that leave them out.
LIMIT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _body_validator(path: str, method: str) -> Draft202012Validator | None:
    """A validator for the operation's JSON body, or None when it takes none."""
    operation = DOCUMENT["paths"].get(path, {}).get(method.lower(), {})
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return None
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def _is_schema_valid(case: Any) -> bool:
    """Whether the request, as sent, is valid by the document.

    Decided here rather than from ``case.meta``: after ``_tame`` edits a case, schemathesis
    revalidates only the edited keys, and a case made invalid by another key can come out
    labelled valid.
    """
    meta = case.meta
    if meta is None:
        return False
    elsewhere = [loc for loc in ParameterLocation if loc is not ParameterLocation.BODY]
    if any(meta.is_negative_at(loc) for loc in elsewhere):
        return False
    validator = _body_validator(case.path, case.method)
    if validator is None:
        return meta.generation.mode.is_positive
    return validator.is_valid(case.body)


def _body_schema(path: str, method: str) -> dict[str, Any]:
    operation = DOCUMENT["paths"].get(path, {}).get(method.lower(), {})  # also undeclared methods
    body = operation.get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref", "")
    return DOCUMENT["components"]["schemas"].get(ref.rsplit("/", 1)[-1], schema) if ref else schema


def _int_in(value: Any, low: int, high: int) -> bool:
    """An integer as JSON Schema sees it (2.0 included) within [low, high]."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return whole and not isinstance(value, bool) and low <= value <= high


def _tame(case: schemathesis.Case) -> None:
    """Keep generations short and aimed at the loaded model, without making bad input good.

    Only values the schema accepts are changed, and only to other values it accepts; an
    optional output limit is added when missing, a required one never (leaving it out is
    what makes such a case invalid). Schemathesis revalidates edited cases.
    """
    body = case.body
    if not isinstance(body, dict):
        return
    schema = _body_schema(case.path, case.method)
    declared = set(schema.get("properties", {}))
    required = set(schema.get("required", ()))
    if isinstance(body.get("model"), str):
        # Random model ids are all a correct 404; aim the cases at the model to reach generation.
        body["model"] = HOSTED_MODEL
    # Messages caps a larger max_tokens instead of refusing it; the OpenAI routes' bound is 65536.
    highest = 1_000_000 if case.path == "/v1/messages" else 65536
    for key in LIMIT_KEYS:
        if _int_in(body.get(key), 1, highest):
            body[key] = min(int(body[key]), 3)
        elif key in body and body[key] is None and key in declared and key not in required:
            body[key] = 3  # null means the default, 4096 tokens: minutes of generation here
    limits = [k for k in LIMIT_KEYS if k in declared]
    if limits and not any(k in body for k in limits) and not required & set(limits):
        body[limits[0]] = 3
    if _int_in(body.get("n"), 1, 128):
        body["n"] = min(int(body["n"]), 2)


#: 400s that no schema can predict, by error code: the bytes of an image, the length of a prompt in
#: tokens, whether the turns make a conversation the model can answer, a tool choice naming a tool
#: the request does not define (a cross-field rule JSON Schema cannot state), a JSON Schema given
#: for tools or structured output that constrained decoding cannot honour, the model's vocabulary.
SEMANTIC_400_CODES = frozenset(
    {
        "invalid_image",
        "context_length_exceeded",
        "invalid_messages",
        "model_capability",
        "invalid_tool_choice",
        "unsupported_schema",
    }
)
SEMANTIC_400_PARAMS = frozenset({"logit_bias"})


def schema_valid_data_accepted(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> None:
    """schemathesis' positive_data_acceptance, except for the refusals listed above.

    A schema-valid request answered 400 for any other reason means /openapi.json does not
    describe what the server accepts: the document has to be fixed. Only envelopes that carry
    a ``code`` (OpenAI's) can tell the two apart; Anthropic's 400s are not judged here.
    """
    if response.status_code != 400 or not _is_schema_valid(case):
        return
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        error = {}
    if not isinstance(error, dict) or "code" not in error:
        return  # an envelope without a code (Anthropic's) cannot say which kind of 400 this is
    code, param = error.get("code"), error.get("param")
    if code in SEMANTIC_400_CODES or (param or "").split(".")[0] in SEMANTIC_400_PARAMS:
        return
    # The body unfiltered (schemathesis' own report hides every field named like "*token*").
    raise AssertionError(
        f"A schema-valid request was refused with 400: {response.content[:500]!r}\nbody: {json.dumps(case.body)[:3000]}"
    )


@pytest.fixture(scope="module")
def base_url(live_server) -> str:
    return live_server.base_url


def test_live_document_is_the_fuzzed_one(http) -> None:
    """The fuzzed document is exactly what the running server publishes at /openapi.json."""
    served = http.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(DOCUMENT))


def test_document_bounds_are_json_schema() -> None:
    """Bounds reach the document as ``minimum``/``maximum``, never as pydantic's raw ``ge``/``le``
    (which JSON Schema ignores: the fuzzer would then call out-of-range values valid)."""

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            raw = {"ge", "le", "gt", "lt"} & set(node)
            assert not (raw and "type" in node), f"{where}: {sorted(raw)}"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(DOCUMENT["components"]["schemas"], "components.schemas")


def test_document_describes_real_errors() -> None:
    """FastAPI's 422 is gone; the statuses the server really sends are documented in its envelope."""
    doc = DOCUMENT
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat
    assert {"200", "400", "404", "413", "429", "503"} <= set(chat)
    assert chat["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    assert chat["429"]["headers"]["Retry-After"]["required"] is True
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@SCHEMA.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    # No shrinking: it can take minutes; the report's curl line reproduces the failing request.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
def test_every_operation(case: schemathesis.Case, base_url: str) -> None:
    _tame(case)
    case.call_and_validate(
        base_url=base_url,
        timeout=60,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[schema_valid_data_accepted],
    )


#: The same server with an API key: its document declares the key, so schemathesis also checks
#: that every operation refuses requests without it or with a wrong one (``ignored_auth``).
AUTH_SCHEMA = schemathesis.openapi.from_dict(openapi_document(api_key=TEST_API_KEY)).include(method="GET")


@AUTH_SCHEMA.parametrize()
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
def test_every_operation_needs_the_key(case: schemathesis.Case, auth_server) -> None:
    case.call_and_validate(
        base_url=auth_server.base_url,
        headers={"Authorization": f"Bearer {TEST_API_KEY}"},
        timeout=60,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[schema_valid_data_accepted],
    )


def test_auth_document_declares_the_key() -> None:
    doc = openapi_document(api_key=TEST_API_KEY)
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": []}, {"apiKey": []}] and "401" in chat["responses"]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_server_still_serves_after_fuzzing(http) -> None:
    body = {"model": HOSTED_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert isinstance(http.get("/health"), httpx.Response) and http.get("/health").status_code == 200
