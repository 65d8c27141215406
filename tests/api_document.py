"""The OpenAPI document the server publishes, built without loading a model (for test tables)."""

from __future__ import annotations

from typing import Any

from conftest import server_settings


def openapi_document(**settings: Any) -> dict[str, Any]:
    """What ``/openapi.json`` answers for a server with these settings (the model never loads)."""
    from gemma_local.server import create_app

    def never_called() -> Any:  # pragma: no cover - the app is never started here
        raise AssertionError("building the document must not load a model")

    return create_app(never_called, server_settings(**settings)).openapi()
