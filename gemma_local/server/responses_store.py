"""Stored Responses-API objects, in SQLite, so that ``previous_response_id`` survives a restart.

One row per response::

    responses(id TEXT PRIMARY KEY, created_at REAL, response TEXT, input_items TEXT)

``response`` is the response object as returned (JSON); ``input_items`` is every input item
the response was generated from, its predecessors' included, so that a response can be
continued (and its input listed) even after an older response of the chain was deleted.

The database runs in WAL mode (readers never wait for the writer) and is bounded: each write
deletes responses older than ``max_age_s`` and the oldest beyond ``max_count``. Each call
opens its own connection, so the store is safe to use from any thread; routes call it through
``anyio.to_thread`` to keep disk I/O off the event loop.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""
_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StoredResponse:
    """A response object and the input items it was generated from (both as JSON values)."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class ResponseStore:
    """Responses kept on disk for ``previous_response_id``, retrieval and deletion.

    Args:
        path: the SQLite file (created, with its folder, on first use).
        max_count: responses kept at most (the oldest go first); 0 keeps any number.
        max_age_s: responses older than this are deleted; None keeps them until ``max_count``.
    """

    def __init__(self, path: Path, *, max_count: int = 10_000, max_age_s: float | None = None) -> None:
        self.path = path
        self.max_count = max_count
        self.max_age_s = max_age_s
        self._ready = False
        self._init_lock = threading.Lock()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self._ensure_schema()
        with closing(sqlite3.connect(self.path, timeout=30)) as conn:
            yield conn

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        with self._init_lock:
            if self._ready:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                # WAL is a property of the file: set once, it holds for every later connection.
                conn.execute("PRAGMA journal_mode=WAL")
                with conn:
                    conn.executescript(_SCHEMA)
                    conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            self._ready = True

    def save(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        """Store (or replace) ``response``, then apply the retention limits."""
        now = time.time()
        row = (
            response["id"],
            now,
            json.dumps(response, ensure_ascii=False, separators=(",", ":")),
            json.dumps(input_items, ensure_ascii=False, separators=(",", ":")),
        )
        with self._connect() as conn, conn:
            conn.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", row)
            self._prune(conn, now)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None (never stored, deleted, or past the retention limits)."""
        with self._connect() as conn:
            found = conn.execute(
                "SELECT response, input_items, created_at FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        if found is None or self._expired(found[2], time.time()):
            return None
        return StoredResponse(response=json.loads(found[0]), input_items=json.loads(found[1]))

    def delete(self, response_id: str) -> bool:
        """Delete a stored response; False when there was none."""
        with self._connect() as conn, conn:
            return conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def count(self) -> int:
        """How many responses are stored."""
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def _expired(self, created_at: float, now: float) -> bool:
        return self.max_age_s is not None and created_at < now - self.max_age_s

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        if self.max_age_s is not None:
            conn.execute("DELETE FROM responses WHERE created_at < ?", (now - self.max_age_s,))
        if self.max_count > 0:
            conn.execute(
                "DELETE FROM responses WHERE id NOT IN "
                "(SELECT id FROM responses ORDER BY created_at DESC, rowid DESC LIMIT ?)",
                (self.max_count,),
            )
