"""Imports point one way: cli/commands → server → serving → pipeline → engine; hub, search, images and
memory are leaves below what uses them. Read from the source, so a stray import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gemma_local

PACKAGE = Path(gemma_local.__file__).parent


def _imports(folder: Path) -> dict[str, set[str]]:
    """Every gemma_local module imported under ``folder``, with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("gemma_local"):
                    found.setdefault(name, set()).add(str(path.relative_to(PACKAGE)))
    return found


def _offending(folder: str, forbidden: tuple[str, ...]) -> dict[str, set[str]]:
    prefixes = tuple(f"gemma_local.{name}" for name in forbidden)
    return {
        module: files
        for module, files in _imports(PACKAGE / folder).items()
        if module.startswith(prefixes) or module in prefixes
    }


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("engine", ("pipeline", "serving", "server", "images", "hub", "search", "commands", "cli", "cli_support")),
        ("pipeline", ("serving", "server", "commands", "cli", "cli_support")),
        # Which models are loaded is not HTTP: the server uses serving, never the reverse.
        ("serving", ("server", "commands", "cli", "cli_support")),
        ("server", ("commands", "cli", "cli_support")),
        ("hub", ("engine", "server", "pipeline", "commands")),
        ("search", ("engine", "server", "pipeline", "commands")),
        ("images", ("server", "pipeline", "commands")),
    ],
)
def test_imports_point_one_way(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _offending(folder, forbidden) == {}


def test_the_memory_model_sits_below_hub_and_engine() -> None:
    """hub and the CLI plan with gemma_local.memory; it imports only the GGUF reader and errors."""
    allowed = {"gemma_local.gguf", "gemma_local.errors"} | {
        f"gemma_local.memory.{m}" for m in ("machine", "planner", "split")
    }
    assert set(_imports(PACKAGE / "memory")) <= allowed
