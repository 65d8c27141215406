"""The real coding agents for the client tests: where `make agents` puts them, and their homes.

Codex CLI and Claude Code are npm packages, pinned in the Makefile and installed into the
git-ignored ``.agents/``. Without Node or without `make agents`, tests that need them skip with
one line saying so.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
AGENTS = REPO / ".agents"
BINARIES = {"codex": "CODEX_VERSION", "claude": "CLAUDE_CODE_VERSION"}


def pinned_version(client: str) -> str:
    """The version the Makefile pins for ``codex`` or ``claude``."""
    makefile = (REPO / "Makefile").read_text()
    match = re.search(rf"^{BINARIES[client]} := (\S+)$", makefile, re.MULTILINE)
    assert match, f"{BINARIES[client]} is not set in the Makefile"
    return match.group(1)


def agent_binary(client: str) -> Path:
    """The installed ``codex`` or ``claude``, or a skip saying how to get it."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the Codex CLI and Claude Code tests need it")
    path = AGENTS / "node_modules" / ".bin" / client
    if not path.exists():
        pytest.skip(f"{client} is not installed: run `make agents`")
    return path


@contextmanager
def codex_home() -> Iterator[Path]:
    """A fresh CODEX_HOME, removed afterwards. It lives under .agents/, not the system temp
    folder: Codex refuses to write its helper binaries (the tool aliases its shell relies on)
    under a temporary directory."""
    home = AGENTS / "homes" / f"codex-{uuid.uuid4().hex[:12]}"
    home.mkdir(parents=True)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)
