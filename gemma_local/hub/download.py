"""Fetch planned files: resumable, verified, and registered atomically.

Why not ``hf_hub_download``: it streams into a process-unique temporary file and deletes it when
the download fails (huggingface_hub ≥ 1.18, ``_download_to_tmp_and_move``), so a killed process
or a dropped connection at 15 GB starts over. Here the bytes go through huggingface_hub's own
HTTP session (auth, endpoint, offline mode, 429/5xx backoff) into a partial file keyed by the
file's sha256::

    store/.partial/<sha256>.part

A later run — in the same process after a dropped connection, or a new process after a crash,
Ctrl-C or ``SIGKILL`` — hashes the bytes already there and asks only for the rest
(``Range: bytes=N-``). The file moves to its final name only after the whole-file sha256
matches the Hub's metadata, and the model is registered only after all its files are in place.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from filelock import FileLock, Timeout

from gemma_local.errors import ChecksumMismatchError, DownloadError, InsufficientDiskError, OfflineError
from gemma_local.hub.plan import PlannedFile, PullPlan
from gemma_local.hub.progress import NullProgress, Progress
from gemma_local.hub.remote import TRANSFER_ERRORS, HubClient, RemoteFile
from gemma_local.hub.store import ModelStore, StoredFile, StoreEntry
from gemma_local.hub.verify import hash_into

__all__ = ["fetch_file", "pull"]

# Consecutive failed attempts (no byte received) before giving up; the partial file stays.
MAX_ATTEMPTS = 6
_RETRY_DELAYS = (0.0, 1.0, 2.0, 4.0, 8.0)  # first retry at once: a dropped connection is usually transient
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def pull(plan: PullPlan, *, client: HubClient, store: ModelStore, progress: Progress | None = None) -> StoreEntry:
    """Download what ``plan`` lists, verify every file, then register the model.

    Raises:
        InsufficientDiskError: before the first byte, when the files will not fit on disk.
        DownloadError / OfflineError: the transfer failed after retries (partial bytes kept).
        ChecksumMismatchError: a file's sha256 differs from the Hub's (its bytes are deleted).
        GatedRepoError: the repo needs an accepted licence and a token.
    """
    progress = progress or NullProgress()
    if not plan.fits_disk:
        raise InsufficientDiskError(str(plan.store_dir), required=plan.disk_needed, free=plan.free_bytes)
    todo = [f for f in plan.files if not f.stored]
    progress.start(total=sum(f.remote.size for f in todo), done=sum(f.have_bytes for f in todo), description=plan.name)
    try:
        digests = {
            f.remote.path: fetch_file(
                client,
                plan.repo_id,
                plan.commit,
                f.remote,
                f.dest,
                store.partial_path(f.expected_digest),
                progress,
            )
            for f in todo
        }
    finally:
        progress.close()
    entry = store.new_entry(
        name=plan.name,
        aliases=list(plan.aliases),
        source="hub",
        repo=plan.repo_id,
        revision=plan.commit,
        quant=plan.quant,
        files=[_stored(f, digests, store) for f in plan.files],
        vision=plan.vision,
        managed=True,
    )
    return store.register(entry)


def _stored(planned: PlannedFile, digests: dict[str, str], store: ModelStore) -> StoredFile:
    sha256 = digests.get(planned.remote.path) or planned.remote.sha256
    if sha256 is None:  # a stored file always has its sha256 on record
        record = store.file_record(planned.dest)
        sha256 = record.sha256 if record else ""
    return StoredFile(
        role=planned.role,
        path=store.relative(planned.dest),
        size=planned.remote.size,
        sha256=sha256,
        repo_path=planned.remote.path,
    )


class _Digest:
    """sha256 of the content, plus git's blob sha1 when the Hub has no LFS sha256 for a file."""

    def __init__(self, remote: RemoteFile) -> None:
        self.remote = remote
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.sha1 = None
        if self.remote.sha256 is None:
            self.sha1 = hashlib.sha1(usedforsecurity=False)
            self.sha1.update(f"blob {self.remote.size}\0".encode())

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)

    def verdict(self) -> tuple[str, str, str]:
        """``(sha256, expected, actual)`` in the algorithm the Hub gave."""
        sha256 = self.sha256.hexdigest()
        if self.sha1 is not None:
            return sha256, self.remote.blob_id or "", self.sha1.hexdigest()
        return sha256, self.remote.sha256 or "", sha256


def fetch_file(
    client: HubClient,
    repo_id: str,
    commit: str,
    remote: RemoteFile,
    dest: Path,
    partial: Path,
    progress: Progress | None = None,
) -> str:
    """Make ``dest`` hold exactly ``remote``'s bytes, resuming from ``partial``; return its sha256.

    Raises:
        DownloadError: another process is fetching the same file, or the transfer kept failing.
        ChecksumMismatchError: the finished file's hash is wrong (partial bytes deleted).
    """
    progress = progress or NullProgress()
    partial.parent.mkdir(parents=True, exist_ok=True)
    # One writer per partial file: two pulls appending to it would interleave their bytes.
    lock = FileLock(str(partial) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise DownloadError(
            f"Another gemma-local pull is downloading {remote.path} right now; wait for it to finish.",
            repo_id=repo_id,
            path=remote.path,
        ) from e
    try:
        return _fetch_locked(client, repo_id, commit, remote, dest, partial, progress)
    finally:
        lock.release()


def _fetch_locked(
    client: HubClient,
    repo_id: str,
    commit: str,
    remote: RemoteFile,
    dest: Path,
    partial: Path,
    progress: Progress,
) -> str:
    digest = _Digest(remote)
    if dest.exists():
        # Moved into place by a run that died before registering: reuse it only if it hashes right.
        if dest.stat().st_size == remote.size:
            hash_into(digest, dest)
            sha256, expected, actual = digest.verdict()
            if expected == actual:
                progress.advance(remote.size)
                return sha256
        dest.unlink()
        digest.reset()
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > remote.size:  # not this file's prefix after all: start over
        partial.unlink()
        progress.advance(-remote.size)
        offset = 0
    if offset:
        progress.note(f"checking {offset / 1e6:,.0f} MB already downloaded")
        hash_into(digest, partial, limit=offset)
    progress.note(remote.path.rsplit("/", 1)[-1])
    failures = 0
    # Unbuffered: every chunk reaches the OS at once, so after a SIGKILL the partial file holds
    # exactly the bytes received and the next run resumes from its size.
    with partial.open("ab", buffering=0) as out:
        while offset < remote.size:
            try:
                with client.open_range(repo_id, commit, remote.path, offset) as response:
                    _check_identity(response, remote, commit, repo_id)
                    if offset and response.status_code == 200:
                        # The server ignored the Range and is sending everything: start over.
                        out.truncate(0)
                        progress.advance(-offset)
                        digest.reset()
                        offset = 0
                    elif offset:
                        _check_content_range(response, offset, remote, repo_id)
                    for chunk in response.iter_bytes():
                        if offset + len(chunk) > remote.size:
                            out.close()
                            partial.unlink(missing_ok=True)
                            raise DownloadError(
                                f"The Hub sent more than the {remote.size} bytes its metadata gives for "
                                f"{remote.path}; the download was discarded. Try again later.",
                                repo_id=repo_id,
                                path=remote.path,
                            )
                        out.write(chunk)
                        digest.update(chunk)
                        offset += len(chunk)
                        progress.advance(len(chunk))
                        failures = 0
                if offset < remote.size:
                    raise _ShortRead(f"connection closed at byte {offset} of {remote.size}")
            except (*TRANSFER_ERRORS, OfflineError, _ShortRead) as e:
                failures += 1
                if failures >= MAX_ATTEMPTS:
                    raise DownloadError(
                        f"The download of {remote.path} keeps failing ({_first_line(e)}); {offset:,} of "
                        f"{remote.size:,} bytes are kept. Run the same command again to resume.",
                        repo_id=repo_id,
                        path=remote.path,
                    ) from e
                time.sleep(_RETRY_DELAYS[min(failures - 1, len(_RETRY_DELAYS) - 1)])
        os.fsync(out.fileno())  # the bytes must be on disk before the rename makes them "complete"
    sha256, expected, actual = digest.verdict()
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatchError(remote.path, expected=expected, actual=actual, repo_id=repo_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, dest)  # atomic: the final name only ever holds verified bytes
    return sha256


class _ShortRead(Exception):
    """The server ended the body early without an error (treated like a dropped connection)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_identity(response, remote: RemoteFile, commit: str, repo_id: str) -> None:
    # Only the Hub's own answer to `resolve` is checked: for LFS files it is a redirect to a CDN
    # whose ETag follows the CDN's rules, while the Hub's carries the commit and the sha256.
    hub = response.history[0] if response.history else response
    served_commit = hub.headers.get("X-Repo-Commit")
    etag = hub.headers.get("X-Linked-Etag") or hub.headers.get("ETag")
    etag = etag.removeprefix("W/").strip('"') if etag else None
    wrong_commit = served_commit is not None and served_commit != commit
    wrong_blob = bool(etag and remote.sha256 and _SHA256.match(etag) and etag != remote.sha256)
    if wrong_commit or wrong_blob:
        raise DownloadError(
            f"The Hub served a different version of {remote.path} than its metadata describes "
            f"(commit {served_commit}, ETag {etag}); run the command again.",
            repo_id=repo_id,
            path=remote.path,
        )


def _check_content_range(response, offset: int, remote: RemoteFile, repo_id: str) -> None:
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
    if response.status_code != 206 or match is None or int(match.group(1)) != offset:
        raise DownloadError(
            f"The Hub answered a resume request for {remote.path} with the wrong range "
            f"({response.status_code} {response.headers.get('Content-Range')!r}); run the command again.",
            repo_id=repo_id,
            path=remote.path,
        )
