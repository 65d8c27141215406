"""Route llama.cpp's C logging into Python logging, and keep the last lines for error messages.

llama.cpp reports *why* a load failed (bad magic, missing tensor, out of memory) only in its
log; the loader quotes these lines in the error it raises.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque

import llama_cpp

logger = logging.getLogger("gemma_local.llama_cpp")

_recent: deque[str] = deque(maxlen=40)
_lock = threading.Lock()
_partial: list[str] = []


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
    # GGML levels: 1 info, 2 warn, 3 error, 4 debug, 5 continuation.
    logger.log(logging.ERROR if level == 3 else logging.DEBUG, "%s", full)


_installed = False


def install() -> None:
    """Install the callback (idempotent). Also initialises llama.cpp's backends once."""
    global _installed
    if _installed:
        return
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
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
