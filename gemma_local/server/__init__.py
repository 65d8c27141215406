"""The OpenAI/Anthropic-compatible HTTP server: ``create_app`` builds it around an engine."""

from gemma_local.server.app import create_app

__all__ = ["create_app"]
