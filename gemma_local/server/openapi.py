"""The OpenAPI document describes the server as it really answers, errors included.

FastAPI documents a ``422`` validation error in its own shape on every operation; this server
answers ``400`` in each API's error envelope instead (see ``errors.py``), plus 401, 404, 413,
429 and 503 where they can happen. :func:`install_openapi` rewrites the generated document
once, so ``/openapi.json`` (and ``/docs``, and the schemathesis fuzz tests run against it)
lists every status an operation can return with the envelope it comes in.

:func:`sse_event_schema` describes the events of a streamed answer, for a route's
``text/event-stream`` response.

Which envelope a path uses is :func:`gemma_local.server.errors.style_for_path`, so a router
that registers its own error style (Anthropic Messages) is documented with it automatically.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from gemma_local.server.auth import require_api_key
from gemma_local.server.errors import style_for_path
from gemma_local.server.runtime import get_models

#: Envelope schemas by error style; a style without one is documented as a plain JSON object.
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "openai": {
        "title": "OpenAIError",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    "anthropic": {
        "title": "AnthropicError",
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with every ``#/$defs/...`` reference replaced by its definition (no cycles here)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def sse_event_schema(*payloads: type[BaseModel], done: str | None = None, style: str = "openai") -> dict[str, Any]:
    """The schema of one server-sent event of a stream, for a route's ``text/event-stream`` response.

    Each event's ``data`` is the JSON of one of ``payloads`` or the API's error envelope (a
    mid-stream error), or the literal ``done`` (``[DONE]`` in Chat Completions). Models are
    inlined, so nothing is added to (or collides in) the document's components.
    """
    variants = []
    for model in (*payloads,):
        generated = model.model_json_schema()
        variants.append(_inline(generated, generated.get("$defs", {})))
    variants.append(ERROR_SCHEMAS.get(style, {"type": "object"}))
    json_data: dict[str, Any] = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": variants},
    }
    data = {"if": {"const": done}, "else": json_data} if done is not None else json_data
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"event": {"type": "string"}, "data": data},
    }


def streamed_or_whole(description: str, stream_schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a generating route: JSON (its ``response_model``), or with
    ``stream: true`` the server-sent events ``stream_schema`` describes."""
    return {200: {"description": description, "content": {"text/event-stream": {"schema": stream_schema}}}}


def _route_needs(route: APIRoute, dependency: object) -> bool:
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call is dependency:
            return True
        stack.extend(dep.dependencies)
    return False


def _error(description: str, schema_ref: str, *, retry_after: bool | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": schema_ref}}},
    }
    if retry_after is not None:
        response["headers"] = {"Retry-After": {**_RETRY_AFTER, "required": retry_after}}
    return response


def _operation_errors(route: APIRoute, has_input: bool, api_key: bool, ref: str) -> dict[str, dict[str, Any]]:
    errors: dict[str, dict[str, Any]] = {}
    if has_input:
        errors["400"] = _error("Invalid request: malformed JSON, a wrong or missing parameter.", ref)
    if api_key and _route_needs(route, require_api_key):
        errors["401"] = _error("Missing or wrong API key.", ref)
    if _route_needs(route, get_models) or "{" in route.path_format:
        errors["404"] = _error("The model (or the object the path names) does not exist here.", ref)
    if route.body_field is not None:
        errors["413"] = _error("The request body is larger than the server accepts.", ref)
        errors["429"] = _error("Every slot is busy and the queue is full.", ref, retry_after=True)
    if _route_needs(route, get_models):
        errors["503"] = _error(
            "The model is loading, failed to load, or the server is stopping.", ref, retry_after=False
        )
    if route.body_field is not None:
        errors["500"] = _error("Generation failed inside the engine.", ref)
    return errors


def document_errors(schema: dict[str, Any], routes: list[Any], *, api_key: bool) -> None:
    """Replace FastAPI's ``422`` with the statuses and envelopes this server really sends (in place).

    Args:
        schema: the OpenAPI document FastAPI generated.
        routes: the app's routes (to see which need the API key and the loaded model).
        api_key: whether the server requires a key; then protected operations document 401
            and a security requirement (Bearer or ``x-api-key``).
    """
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if api_key:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        }
    # Routers are included as branches (FastAPI >= 0.16x); walk down to each real route.
    for context in iter_route_contexts(routes):
        route = context.original_route
        path = context.path_format
        if not isinstance(route, APIRoute) or not route.include_in_schema or path is None:
            continue
        item = schema.get("paths", {}).get(path)
        if item is None:
            continue
        style = style_for_path(path)
        envelope = ERROR_SCHEMAS.get(style, {"title": f"{style}Error", "type": "object"})
        schemas[envelope["title"]] = envelope
        ref = f"#/components/schemas/{envelope['title']}"
        for method in route.methods or ():
            operation = item.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            has_input = route.body_field is not None or bool(operation.get("parameters"))
            for status, response in _operation_errors(route, has_input, api_key, ref).items():
                responses.setdefault(status, response)
            if api_key and _route_needs(route, require_api_key):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]


def install_openapi(app: FastAPI, *, api_key: bool) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) document the real error responses."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            document_errors(schema, app.routes, api_key=api_key)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
