"""Route llama.cpp's C logging into Python logging, and keep the last lines for error messages.

llama.cpp reports *why* a load failed (bad magic, missing tensor, out of memory) only in its
log; the loader quotes these lines in the error it raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Iterator

import llama_cpp

logger = logging.getLogger("gemma_local.llama_cpp")

_recent: deque[str] = deque(maxlen=40)
_lock = threading.Lock()
_partial: list[str] = []
_captures: list[list[str]] = []


@llama_cpp.llama_log_callback
def _callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace")
    with _lock:
        _partial.append(line)
        if not line.endswith("\n"):
            return
        full = "".join(_partial).rstrip()
        _partial.clear()
        _recent.append(full)
        for sink in _captures:
            sink.append(full)
    # GGML levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation. llama.cpp warns about
    # harmless model quirks on every load, so only its errors reach the user's log by default.
    logger.log(logging.ERROR if level == 4 else logging.DEBUG, "%s", full)


_installed = False


def install() -> None:
    """Install the callback (idempotent). Also initialises llama.cpp's backends once."""
    global _installed
    if _installed:
        return
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    try:  # the multimodal library (vision projector) logs through its own hook
        from llama_cpp import mtmd_cpp

        mtmd_cpp.mtmd_log_set(_callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))
    except (ImportError, AttributeError, OSError):  # a build without mtmd has no such hook
        pass
    llama_cpp.llama_backend_init()
    _installed = True


def recent_errors(limit: int = 3) -> list[str]:
    """The last lines llama.cpp logged that look like errors or failures."""
    with _lock:
        lines = list(_recent)
    hits = [ln for ln in lines if any(w in ln.lower() for w in ("error", "fail", "invalid", "mismatch"))]
    return hits[-limit:]


def clear() -> None:
    with _lock:
        _recent.clear()


@contextlib.contextmanager
def capture() -> Iterator[list[str]]:
    """Collect every line llama.cpp logs inside the block (e.g. its buffer sizes at load)."""
    sink: list[str] = []
    with _lock:
        _captures.append(sink)
    try:
        yield sink
    finally:
        with _lock:
            # By identity: two sinks with equal contents are still different captures.
            _captures[:] = [c for c in _captures if c is not sink]
