"""Shared fixtures: the real Gemma 3 270M model, loaded once per session; isolated user dirs.

Every test runs with GEMMA_LOCAL_HOME in a fresh temp dir, so nothing reads or writes the
user's real store. The embedded model file itself is assembled once into the (rebuildable)
cache dir and shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "gemma-home"
    home.mkdir()
    monkeypatch.setenv("GEMMA_LOCAL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("GEMMA_LOCAL_MODEL", "GEMMA_LOCAL_API_KEY", "HF_TOKEN", "LINKUP_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The embedded Gemma 3 270M GGUF (assembled once, then reused)."""
    from gemma_local.hub.embedded import embedded_model_path

    return embedded_model_path()


# Two threads keep the 2-core CI machine responsive while a test server and client both run.
TEST_THREADS = int(os.environ.get("GEMMA_LOCAL_TEST_THREADS", "2"))


@pytest.fixture(scope="session")
def engine(model_path: Path):
    """One real engine for the whole session: 4 slots of 2048 tokens."""
    from gemma_local.engine import ContextParams, Engine

    eng = Engine(
        model_path,
        ContextParams(n_ctx_per_seq=2048, n_seq=4, n_threads=TEST_THREADS),
        max_queue=8,
        model_id="gemma-3-270m-embedded",
    )
    yield eng
    eng.close()
