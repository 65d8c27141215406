"""A fake Hugging Face Hub on 127.0.0.1, speaking the parts of the protocol ``pull`` uses.

- ``GET /api/models/ORG/REPO[/revision/REV]?blobs=True``: model info with ``sha``, ``gated``
  and ``siblings`` (size, ``blobId``, ``lfs.sha256``); unknown repo → 401 ``RepoNotFound``,
  unknown revision → 404 ``RevisionNotFound``.
- ``GET|HEAD /ORG/REPO/resolve/REV/FILE``: gated repos answer 401 (no token) or 403 (token not
  accepted) with ``X-Error-Code: GatedRepo``; LFS files redirect (302) to ``/cdn/SHA256`` like the
  real Hub, carrying ``X-Repo-Commit``, ``X-Linked-Etag`` and ``X-Linked-Size``.
- ``GET /cdn/SHA256``: the bytes, honouring ``Range: bytes=N-`` (206 + ``Content-Range``).

Every request is recorded (path, Range start, status, bytes actually written) so tests can
prove a resume asked for ``bytes=N-`` and never re-fetched a byte before N. Knobs per file:
drop the connection after K bytes, throttle, serve corrupt bytes, advertise a false size.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from gguf import GGUFWriter


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gguf_model(payload: int = 256 * 1024, *, seed: int = 0, file_type: int = 15, arch: str = "gemma3") -> bytes:
    """A small valid GGUF language model: real metadata, ``payload`` random bytes of tensor data."""
    return _gguf(arch, payload, seed, _model_metadata(file_type))


def gguf_mmproj(payload: int = 64 * 1024, *, seed: int = 1) -> bytes:
    """A small valid GGUF vision projector (``clip.*`` metadata)."""

    def meta(w: GGUFWriter) -> None:
        w.add_bool("clip.has_vision_encoder", True)
        w.add_string("clip.projector_type", "gemma3")
        w.add_uint32("clip.vision.image_size", 64)
        w.add_uint32("clip.vision.patch_size", 4)
        w.add_uint32("clip.vision.projection_dim", 640)
        w.add_uint32("clip.vision.block_count", 1)

    return _gguf("clip", payload, seed, meta)


def _model_metadata(file_type: int):
    def meta(w: GGUFWriter) -> None:
        w.add_name("tiny gemma")
        w.add_uint32("general.file_type", file_type)
        w.add_context_length(32768)
        w.add_block_count(6)
        w.add_embedding_length(64)
        w.add_feed_forward_length(128)
        w.add_head_count(4)
        w.add_head_count_kv(1)
        w.add_key_length(16)
        w.add_uint32("gemma3.attention.sliding_window", 512)
        w.add_token_list([f"tok{i}" for i in range(300)])
        w.add_string("tokenizer.chat_template", "{{ messages }}")

    return meta


def _gguf(arch: str, payload: int, seed: int, add_metadata) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.gguf"
        writer = GGUFWriter(str(path), arch)
        add_metadata(writer)
        data = np.random.default_rng(seed).integers(-128, 127, size=payload, dtype=np.int8)
        writer.add_tensor("blob", data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


@dataclass
class FakeFile:
    content: bytes
    lfs: bool = True
    served: bytes | None = None  # what the CDN actually sends (corruption tests)
    advertised_size: int | None = None  # what the metadata claims (disk-space tests)
    drops: list[int] = field(default_factory=list)  # per GET: close the connection after N bytes
    throttle: tuple[int, float] | None = None  # (bytes per write, seconds between writes)
    ignore_range: bool = False  # answer 200 with the whole file, like a proxy that drops Range

    @property
    def sha256(self) -> str:
        return sha256(self.content)

    @property
    def blob_id(self) -> str:
        return hashlib.sha1(f"blob {len(self.content)}\0".encode() + self.content).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    commits: dict[str, dict[str, FakeFile]]  # commit sha → files, in push order
    gated: bool = False

    @property
    def head(self) -> str:
        return list(self.commits)[-1]


@dataclass
class Request:
    method: str
    path: str
    status: int
    range_start: int | None
    bytes_sent: int
    authorization: str | None
    done: bool = False  # the answer is complete (or the client went away)


class FakeHub:
    """The server and its state; ``url`` goes into ``HF_ENDPOINT`` (or ``HubClient(endpoint=…)``)."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.accepted_tokens: set[str] = set()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_repo(self, repo_id: str, files: dict[str, bytes | FakeFile], *, gated: bool = False) -> FakeRepo:
        repo = FakeRepo(repo_id, {}, gated)
        self.repos[repo_id.lower()] = repo
        self.push(repo_id, files)
        return repo

    def push(self, repo_id: str, files: dict[str, bytes | FakeFile]) -> str:
        """A new commit replacing the repo's files; returns its sha."""
        commit = secrets.token_hex(20)
        self.repos[repo_id.lower()].commits[commit] = {
            name: f if isinstance(f, FakeFile) else FakeFile(f) for name, f in files.items()
        }
        return commit

    def file(self, repo_id: str, name: str) -> FakeFile:
        repo = self.repos[repo_id.lower()]
        return repo.commits[repo.head][name]

    def content_requests(self) -> list[Request]:
        """GETs that carried file bytes (the CDN leg, or direct resolves of non-LFS files)."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and r.status in (200, 206) and not r.path.startswith("/api/")
            ]

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every answer has finished (a killed client's last body is still being written)."""
        deadline = time.monotonic() + timeout
        while any(not r.done for r in list(self.requests)):
            if time.monotonic() > deadline:
                raise TimeoutError("the fake Hub is still answering")
            time.sleep(0.01)

    def find_blob(self, digest: str) -> FakeFile | None:
        for repo in self.repos.values():
            for files in repo.commits.values():
                for f in files.values():
                    if f.lfs and f.sha256 == digest:
                        return f
        return None


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a dropped body is unambiguous

        def log_message(self, format: str, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        # --- routing -------------------------------------------------------------------

        def _dispatch(self, head: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            self._range_start = _range_start(self.headers.get("Range"))
            if m := _API.match(path):
                self._model_info(m["repo"], m["rev"], parse_qs(url.query))
            elif m := _RESOLVE.match(path):
                self._resolve(m["repo"], m["rev"], m["file"], head)
            elif m := _CDN.match(path):
                blob = hub.find_blob(m["sha"])
                if blob is None:
                    self._error(404, "EntryNotFound", "no such blob")
                else:
                    self._send_bytes(blob, head, {})
            else:
                self._error(404, None, "not found")

        def _repo(self, repo_id: str, rev: str | None) -> tuple[FakeRepo, str] | None:
            repo = hub.repos.get(repo_id.lower())
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            commit = repo.head if rev in (None, "main") else rev
            if commit not in repo.commits:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo, commit

        def _model_info(self, repo_id: str, rev: str | None, query: dict) -> None:
            found = self._repo(repo_id, rev)
            if found is None:
                return
            repo, commit = found
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for name, f in repo.commits[commit].items():
                sibling: dict = {"rfilename": name}
                if blobs:
                    size = f.advertised_size or len(f.content)
                    sibling.update(size=size, blobId=f.blob_id)
                    if f.lfs:
                        sibling["lfs"] = {"size": size, "sha256": f.sha256, "pointerSize": 134}
                siblings.append(sibling)
            body = {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": siblings,
            }
            self._json(200, body)

        def _resolve(self, repo_id: str, rev: str, name: str, head: bool) -> None:
            found = self._repo(repo_id, rev)
            if found is None:
                return
            repo, commit = found
            if repo.gated:
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ").strip()
                if token not in hub.accepted_tokens:
                    status = 403 if token else 401
                    message = f"Access to model {repo.repo_id} is restricted and you are not in the authorized list."
                    self._error(status, "GatedRepo", message)
                    return
            f = repo.commits[commit].get(name)
            if f is None:
                self._error(404, "EntryNotFound", f"{name} does not exist")
                return
            meta = {"X-Repo-Commit": commit}
            if f.lfs:
                self.send_response(302)
                self.send_header("Location", f"/cdn/{f.sha256}")
                self.send_header("X-Repo-Commit", commit)
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(len(f.content)))
                self.send_header("ETag", f'"{f.sha256}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._log(302)
                return
            meta["ETag"] = f'"{f.blob_id}"'
            self._send_bytes(f, head, meta)

        # --- answers -------------------------------------------------------------------

        def _send_bytes(self, f: FakeFile, head: bool, headers: dict[str, str]) -> None:
            data = f.served if f.served is not None else f.content
            if f.ignore_range:
                self._range_start = None
            start = self._range_start or 0
            if start >= len(data) and start:
                self._error(416, None, "range not satisfiable")
                return
            body = data[start:]
            self.send_response(206 if self._range_start else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if self._range_start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                self._log(206 if self._range_start else 200)
                return
            with hub._lock:
                drop = f.drops.pop(0) if f.drops else None
            limit = len(body) if drop is None else min(drop, len(body))
            step, delay = f.throttle or (1 << 20, 0.0)
            record = self._log(206 if self._range_start else 200, done=False)
            try:
                while record.bytes_sent < limit:
                    piece = body[record.bytes_sent : min(record.bytes_sent + step, limit)]
                    self.wfile.write(piece)
                    record.bytes_sent += len(piece)
                    if delay:
                        time.sleep(delay)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client died (SIGKILL test): the record keeps what reached the socket
            finally:
                self.close_connection = True
                record.done = True

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self._log(status)

        def _error(self, status: int, code: str | None, message: str) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self._log(status)

        def _log(self, status: int, done: bool = True) -> Request:
            record = Request(
                method=self.command,
                path=urlparse(self.path).path,
                status=status,
                range_start=self._range_start,
                bytes_sent=0,  # file bodies count theirs as they go
                authorization=self.headers.get("Authorization"),
                done=done,
            )
            hub.record(record)
            return record

    return Handler


def _range_start(header: str | None) -> int | None:
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes=(\d+)-\s*", header)
    return int(m.group(1)) if m else None
