"""Long prompt prefixes saved on disk, so a restarted server does not compute them again.

When a prompt of at least ``min_tokens`` tokens has been processed, the scheduler copies its
slot's whole sequence state (``llama_state_seq_get_data``: every position of the global
layers, the window of the sliding-window ones) and the slot's sliding-window checkpoints; a
background thread writes them, with the token list, to one file. A later request (in this
process or a new one) whose prompt shares more with a file than with any slot loads it into
a slot and cuts it back to the common prefix with :meth:`SlotCache.truncate
<gemma_local.engine.kv_slots.SlotCache.truncate>`, which uses the saved checkpoints, exactly
as for a slot's own content.

Layout, under ``root`` (``GEMMA_LOCAL_HOME/prefix-cache`` for the CLI and server)::

    prefix-cache/
      <identity hash>/          one folder per model file and KV layout (see model_identity)
        <token hash>.gpc        one saved prompt
        .<token hash>.<pid>.tmp a file being written (renamed into place when complete)

A file is ``MAGIC``, a little-endian u32 header length, a JSON header (identity, token count,
state and checkpoint sizes, CRC-32 of the rest), the tokens as little-endian int32, the state,
then each checkpoint's bytes. It is written to a temporary name and renamed, so a reader
never sees half a file. Anything that does not check out (size, CRC, identity, llama.cpp
refusing the state) is deleted and the request goes on as if there were no file.

What is written, and when:

- only prompts without images (an image stands as a placeholder id derived from a short
  hash of its pixels: fine in memory, not something to trust across restarts); a prompt
  with images may still *load* a text-only file, since the common prefix then ends before
  its first image;
- only when the prompt has at least ``min_tokens`` tokens that no file already holds, so a
  conversation is saved again every ``min_tokens`` new tokens, not each turn, and a second
  conversation sharing a saved system prompt writes nothing; a file whose tokens the new one
  extends is deleted once the new one is in place (it can serve everything the old one could);
- one snapshot at a time: while one is being written, later prompts are not copied (the
  copy is as large as the slot's KV: 2.6 GiB for 32K tokens on the 27B), and the scheduler
  takes none when free memory is short (:meth:`Scheduler._save_prefix
  <gemma_local.engine.scheduler.Scheduler._save_prefix>`).

The total size of ``root`` (every identity) is kept under ``max_bytes`` by deleting the least
recently used files; loading a file, or finding a prompt already saved, refreshes its time
(the file's mtime, so the order survives restarts and is shared between processes).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from gemma_local.engine.kv_slots import Checkpoint, common_prefix_len

if TYPE_CHECKING:
    from gemma_local.engine.model import LlamaModel

logger = logging.getLogger("gemma_local.engine")

MAGIC = b"GLPREFIX1\n"
SUFFIX = ".gpc"
#: Bumped whenever the file layout or what the identity covers changes.
FORMAT_VERSION = 1
#: Temporary files older than this are another process's crashed write: removed on start.
STALE_TMP_S = 3600.0
_HEADER_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class DiskCachePolicy:
    """Where saved prefixes go and how much they may take.

    Args:
        root: the folder (created on demand).
        max_bytes: the most all files under ``root`` may take together; the least recently
            used go first.
        min_tokens: a prompt is saved when it has at least this many tokens that no file holds yet.
    """

    root: Path
    max_bytes: int = 8 * 2**30
    min_tokens: int = 2048


@dataclass(frozen=True)
class DiskEntry:
    """One file of the index: the tokens it holds and where its checkpoints are."""

    path: Path
    tokens: list[int]
    checkpoints: tuple[int, ...]  # positions, oldest first

    def reusable(self, n: int, n_swa: int) -> int:
        """How many of its first ``n`` tokens a slot loaded from it keeps.

        A saved state holds the last ``n_swa`` positions of the sliding-window layers, enough
        for the whole prompt or all but its last token (a prompt sent again), or for any cut
        of a prompt no longer than the window; further back, the last checkpoint at or before
        ``n``. The cut after loading has the last word.
        """
        n = min(n, len(self.tokens))
        if n <= 0:
            return 0
        if not n_swa or n >= len(self.tokens) - 1 or len(self.tokens) <= n_swa:
            return n
        return max((p for p in self.checkpoints if p <= n), default=0)


@dataclass(frozen=True)
class LoadedEntry:
    """A file read back: what to restore into a slot."""

    tokens: list[int]
    state: ctypes.Array
    checkpoints: list[Checkpoint]


@dataclass(frozen=True)
class _Snapshot:
    tokens: list[int]
    state: ctypes.Array
    checkpoints: tuple[Checkpoint, ...]


def model_identity(model: LlamaModel) -> dict[str, Any]:
    """What a saved state depends on: the weights file and every parameter that changes the KV.

    The file is named by path, size and modification time (hashing gigabytes of weights on
    each start would cost more than it saves); the context parameters are the ones that
    change the KV layout or its values (cells per sequence, cache types, sliding-window
    layout, micro-batch size, where layers run). Slot count and threads are not in it: each
    slot has its own KV stream of the same size, and the results do not depend on threads.
    """
    stat = model.path.stat()
    p = model.params
    return {
        "format": FORMAT_VERSION,
        "llama_cpp": llama_cpp.__version__,
        "model": str(model.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "n_ctx_per_seq": model.n_ctx_per_seq,
        "kv_type": p.kv_type,
        "flash_attn": p.flash_attn,
        "swa_full": p.swa_full,
        "n_ubatch": p.n_ubatch,
        "gpu_layers": p.gpu_layers,
        "repack": p.repack,
        "rpc_servers": list(p.rpc_servers),
        "tensor_split": list(p.tensor_split),
    }


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _token_bytes(tokens: Sequence[int]) -> bytes:
    return np.asarray(tokens, dtype="<i4").tobytes()


class PrefixDiskCache:
    """Saved prefixes of one model identity; the index in memory, the files under ``policy.root``.

    ``find`` and ``read`` run on the scheduler thread, ``save`` hands a snapshot to a writer
    thread of its own; the index is shared under a lock.
    """

    def __init__(self, policy: DiskCachePolicy, identity: dict[str, Any]) -> None:
        self.policy = policy
        self.identity = identity
        self._identity_json = json.dumps(identity, sort_keys=True)
        self.dir = policy.root / _digest(self._identity_json.encode())[:16]
        self._lock = threading.Lock()
        self._entries: dict[str, DiskEntry] = {}
        self._queue: queue.Queue[_Snapshot | None] = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None
        self.saved = 0
        self.loaded = 0
        self.dropped = 0  # files found unreadable, corrupt or mismatched, and deleted
        self._scan()

    # --- scheduler thread --------------------------------------------------------------------

    def find(self, prompt: list[int], cut, n_swa: int) -> tuple[DiskEntry, int] | None:
        """The file that keeps the most of ``prompt`` once loaded, and how many tokens (estimated).

        Args:
            prompt: the prompt's tokens.
            cut: the scheduler's limit on a kept prefix (never the last token, nor half an image).
            n_swa: the model's sliding window (0: none).
        """
        with self._lock:
            entries = list(self._entries.values())
        best: tuple[DiskEntry, int] | None = None
        for entry in entries:
            n = entry.reusable(cut(common_prefix_len(entry.tokens, prompt)), n_swa)
            if n > 0 and (best is None or n > best[1]):
                best = (entry, n)
        return best

    def covered(self, tokens: list[int]) -> tuple[DiskEntry | None, int]:
        """The file sharing the longest prefix with ``tokens``, and that length."""
        with self._lock:
            entries = list(self._entries.values())
        best: tuple[DiskEntry | None, int] = (None, 0)
        for entry in entries:
            n = common_prefix_len(entry.tokens, tokens)
            if n > best[1]:
                best = (entry, n)
        return best

    def wants(self, tokens: list[int]) -> bool:
        """Whether a prompt just processed should be saved (see the module docstring)."""
        if len(tokens) < self.policy.min_tokens or self._queue.unfinished_tasks:
            return False
        entry, n = self.covered(tokens)
        if len(tokens) - n >= self.policy.min_tokens:
            return True
        if entry is not None:
            self._touch(entry.path)  # held already: it is in use, keep it
        return False

    def save(self, tokens: list[int], state: ctypes.Array, checkpoints: Sequence[Checkpoint]) -> bool:
        """Hand a snapshot to the writer thread; False when it is still busy with one (skipped)."""
        if ctypes.sizeof(state) + sum(c.nbytes for c in checkpoints) > self.policy.max_bytes:
            return False  # it could only be written by evicting everything, itself included
        self._start_writer()
        if self._queue.unfinished_tasks:
            return False
        self._queue.put_nowait(_Snapshot(list(tokens), state, tuple(checkpoints)))
        return True

    def read(self, entry: DiskEntry) -> LoadedEntry | None:
        """Read a file back, checked; a bad one is deleted and ``None`` returned."""
        try:
            data = bytearray(entry.path.read_bytes())
        except OSError:
            self._forget(entry.path)
            return None
        loaded = self._parse(entry.path, data)
        if loaded is None:
            self.drop(entry.path)
            return None
        self._touch(entry.path)
        self.loaded += 1
        return loaded

    def drop(self, path: Path) -> None:
        """Delete a file that failed a check (here, or when llama.cpp refused its state)."""
        logger.warning("prefix cache: ignoring and deleting %s (corrupt or from another model/context)", path.name)
        self.dropped += 1
        self._forget(path)
        path.unlink(missing_ok=True)

    def flush(self) -> None:
        """Wait until every queued snapshot is on disk."""
        self._queue.join()

    def close(self) -> None:
        """Finish the writes in progress and stop the writer thread."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None

    def entries(self) -> list[DiskEntry]:
        with self._lock:
            return list(self._entries.values())

    # --- files -------------------------------------------------------------------------------

    def _scan(self) -> None:
        try:
            paths = list(self.dir.iterdir()) if self.dir.is_dir() else []
        except OSError as e:
            logger.warning("prefix cache: cannot read %s (%s); starting empty", self.dir, e)
            return
        now = time.time()
        for path in paths:
            if path.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > STALE_TMP_S:
                        path.unlink()
            elif path.suffix == SUFFIX:
                entry = self._read_index(path)
                if entry is None:
                    self.drop(path)
                else:
                    self._entries[path.name] = entry

    def _read_header(self, data: bytes | bytearray) -> tuple[dict[str, Any], int] | None:
        if data[: len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + _HEADER_LEN.size:
            return None
        (n,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _HEADER_LEN.size
        try:
            header = json.loads(bytes(data[start : start + n]))
        except ValueError:
            return None
        if not isinstance(header, dict) or header.get("identity") != self.identity:
            return None
        return header, start + n

    def _read_index(self, path: Path) -> DiskEntry | None:
        """The header and tokens of a file (not its state): enough to match prompts against."""
        try:
            with path.open("rb") as f:
                head = f.read(len(MAGIC) + _HEADER_LEN.size)
                if len(head) < len(MAGIC) + _HEADER_LEN.size:
                    return None
                (n,) = _HEADER_LEN.unpack_from(head, len(MAGIC))
                head += f.read(n)
                parsed = self._read_header(head)
                if parsed is None:
                    return None
                header, _ = parsed
                raw = f.read(4 * int(header["n_tokens"]))
            tokens = np.frombuffer(raw, dtype="<i4").tolist()
            if len(tokens) != header["n_tokens"]:
                return None
            return DiskEntry(path, tokens, tuple(int(p) for p, _ in header["checkpoints"]))
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def _parse(self, path: Path, data: bytearray) -> LoadedEntry | None:
        try:
            parsed = self._read_header(data)
            if parsed is None:
                return None
            header, offset = parsed
            n_tokens, state_bytes = int(header["n_tokens"]), int(header["state_bytes"])
            sizes = [(int(p), int(n)) for p, n in header["checkpoints"]]
            end = offset + 4 * n_tokens + state_bytes + sum(n for _, n in sizes)
            if end != len(data) or zlib.crc32(memoryview(data)[offset:]) != header["crc32"]:
                return None
            tokens = np.frombuffer(data, dtype="<i4", count=n_tokens, offset=offset).tolist()
            offset += 4 * n_tokens
            # Views into the one buffer (ctypes keeps it alive): no second copy of the state.
            state = (ctypes.c_uint8 * state_bytes).from_buffer(data, offset)
            offset += state_bytes
            checkpoints = []
            for pos, size in sizes:
                checkpoints.append(Checkpoint(pos=pos, data=(ctypes.c_uint8 * size).from_buffer(data, offset)))
                offset += size
        except (KeyError, TypeError, ValueError):
            return None
        return LoadedEntry(tokens, state, checkpoints)

    def _write(self, snap: _Snapshot) -> None:
        tokens = _token_bytes(snap.tokens)
        name = _digest(tokens)[:32] + SUFFIX
        parts = [tokens, memoryview(snap.state), *(memoryview(c.data) for c in snap.checkpoints)]
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        header = json.dumps(
            {
                "identity": self.identity,
                "n_tokens": len(snap.tokens),
                "state_bytes": ctypes.sizeof(snap.state),
                "checkpoints": [[c.pos, c.nbytes] for c in snap.checkpoints],
                "crc32": crc,
            }
        ).encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / name
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        try:
            with tmp.open("wb") as f:
                f.write(MAGIC + _HEADER_LEN.pack(len(header)) + header)
                for part in parts:
                    f.write(part)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.saved += 1
        entry = DiskEntry(path, list(snap.tokens), tuple(c.pos for c in snap.checkpoints))
        with self._lock:
            # A file whose tokens the new one extends can serve nothing the new one cannot.
            older = [
                e.path
                for e in self._entries.values()
                if len(e.tokens) < len(entry.tokens) and entry.tokens[: len(e.tokens)] == e.tokens
            ]
            self._entries[name] = entry
        for old in older:
            self._forget(old)
            old.unlink(missing_ok=True)
        self._evict(keep=path)

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used files until all of ``root`` fits ``max_bytes``."""
        files = []
        for path in self.policy.root.glob(f"*/*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.policy.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            self._forget(path)
            total -= size

    def _forget(self, path: Path) -> None:
        with self._lock:
            if path.parent == self.dir:
                self._entries.pop(path.name, None)

    @staticmethod
    def _touch(path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)

    # --- writer thread -----------------------------------------------------------------------

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._run_writer, name="gemma-local-prefix-disk", daemon=True)
            self._writer.start()

    def _run_writer(self) -> None:
        while True:
            snap = self._queue.get()
            try:
                if snap is None:
                    return
                self._write(snap)
            except Exception:  # a full or read-only disk must not stop the engine
                logger.exception("prefix cache: could not save a prompt to %s", self.dir)
            finally:
                self._queue.task_done()
