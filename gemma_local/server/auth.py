"""API key check: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request

from gemma_local.server.errors import AuthenticationError


def _offered_keys(request: Request) -> list[str]:
    keys = []
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    x_api_key = request.headers.get("x-api-key", "").strip()
    if x_api_key:
        keys.append(x_api_key)
    return keys


def check_api_key(expected: str | None, request: Request) -> None:
    """Accept the request when no key is configured or either header carries it.

    Raises:
        AuthenticationError: a key is configured and the request does not carry it (HTTP 401).
    """
    if not expected:
        return
    offered = _offered_keys(request)
    if not offered:
        raise AuthenticationError(
            "Missing API key. Send it as `Authorization: Bearer KEY` or `x-api-key: KEY` "
            "(the server was started with --api-key / GEMMA_LOCAL_API_KEY)."
        )
    wanted = expected.encode()
    # Check every offered key so timing does not tell which header matched.
    matches = [hmac.compare_digest(key.encode(), wanted) for key in offered]
    if not any(matches):
        raise AuthenticationError("Incorrect API key provided.")


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for every protected router."""
    check_api_key(request.app.state.runtime.settings.api_key, request)


def protected_router(tag: str) -> APIRouter:
    """A router whose every route needs the API key (when one is set); ``tag`` groups it in /docs."""
    return APIRouter(dependencies=[Depends(require_api_key)], tags=[tag])
