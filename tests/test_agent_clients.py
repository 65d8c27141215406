"""The pinned coding agents are installed and runnable (`make agents`)."""

from __future__ import annotations

import os
import subprocess

import pytest
from agent_clients import agent_binary, codex_home, pinned_version


@pytest.mark.parametrize("client", ["codex", "claude"])
def test_pinned_client_runs(client: str) -> None:
    """`claude` is a stub until Claude Code's install script has run; `make agents` runs it."""
    binary = agent_binary(client)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=True)
    assert pinned_version(client) in out.stdout


def test_codex_home_takes_its_helper_binaries() -> None:
    binary = agent_binary("codex")
    with codex_home() as home:
        env = {**os.environ, "CODEX_HOME": str(home)}
        out = subprocess.run([binary, "login", "status"], capture_output=True, text=True, timeout=60, env=env)
        assert "Refusing to create helper binaries" not in out.stdout + out.stderr
    assert not home.exists()
