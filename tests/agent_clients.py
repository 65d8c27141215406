"""The real coding agents for the client tests: where `make agents` puts them, and their homes.

Codex CLI and Claude Code are npm packages, pinned in the Makefile and installed into the
git-ignored ``.agents/``. Without Node or without `make agents`, tests that need them skip with
one line saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
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
    root = AGENTS / "homes"
    if root.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve()):
        root = Path.home() / ".cache" / "gemma-local" / "codex-homes"  # a checkout under /tmp (CI's clone)
    home = root / f"codex-{uuid.uuid4().hex[:12]}"
    home.mkdir(parents=True)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


# --- a real `gemma-local serve` for the clients ------------------------------------------------

#: One request log line of the server: ``... POST /v1/messages status=200 in=N out=M cached=C ... finish=F``.
LOG_LINE = re.compile(
    r"POST (?P<path>\S+) status=(?P<status>\d+) in=(?P<prompt>\d+) out=(?P<out>\d+) cached=(?P<cached>\d+) "
    r"ttft=(?P<ttft>\S+) .*finish=(?P<finish>\S+)"
)


@dataclass(frozen=True)
class LoggedRequest:
    """One model request as the server's request log reports it."""

    path: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float | None
    finish: str


@dataclass
class ServeProcess:
    """``python -m gemma_local serve`` running from the repository root, its log in a file."""

    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, path: str) -> list[LoggedRequest]:
        """The requests to ``path`` answered so far, in order (not those the client gave up on
        and sent again: Codex retries a request whose stream stays silent too long)."""
        out = []
        for m in LOG_LINE.finditer(self.log.read_text()):
            if m["path"] == path and m["finish"] != "cancelled":
                ttft = None if m["ttft"] == "-" else float(m["ttft"].rstrip("s"))
                out.append(
                    LoggedRequest(
                        m["path"],
                        int(m["status"]),
                        int(m["prompt"]),
                        int(m["out"]),
                        int(m["cached"]),
                        ttft,
                        m["finish"],
                    )
                )
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(home: Path, *flags: str, ready_timeout: float = 120) -> Iterator[ServeProcess]:
    """The server on the embedded model, on a free loopback port, stopped afterwards.

    Args:
        home: its GEMMA_LOCAL_HOME (an empty store: the embedded 270M is served).
        flags: more ``serve`` options (``--ctx``, ``--force-tool``, …).
    """
    port = free_port()
    log = home / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMMA_LOCAL_")}
    env["GEMMA_LOCAL_HOME"] = str(home)
    cmd = [sys.executable, "-m", "gemma_local", "serve", "--port", str(port), *flags]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=sink, text=True, env=env)
    server = ServeProcess(proc, port, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert proc.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{server.root}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not get ready"
            time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
