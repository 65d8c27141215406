"""The Hugging Face Hub as ``pull`` sees it, through ``huggingface_hub``'s own client.

``huggingface_hub`` supplies the HTTP session (``get_session``), auth headers (``HF_TOKEN`` or
``hf auth login``), the endpoint (``HF_ENDPOINT``), offline mode (``HF_HUB_OFFLINE``), retries
on 429/5xx and its typed errors. This module turns those errors into gemma-local's own, each
naming the fix, and never lets a raw traceback reach the user.

Only ``pull`` imports this module: nothing else in gemma-local touches the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2
from huggingface_hub import HfApi, constants, get_token, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.errors import (
    GatedRepoError as HfGatedRepoError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

from gemma_local.errors import DownloadError, GatedRepoError, OfflineError, RemoteNotFoundError
from gemma_local.hub.catalog import load_catalog

__all__ = ["HubClient", "RemoteFile", "RemoteRepo"]

# Errors of the transport itself (no HTTP answer): retried with a Range request by the downloader.
TRANSFER_ERRORS: tuple[type[Exception], ...] = (httpx2.TransportError,)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at one commit, as the Hub's metadata describes it."""

    path: str
    size: int
    sha256: str | None  # LFS files (every GGUF); None for small files kept in git
    blob_id: str | None  # git blob sha1


@dataclass(frozen=True)
class RemoteRepo:
    """A repo at one commit: its files with their sizes and hashes."""

    repo_id: str
    commit: str
    gated: bool
    files: dict[str, RemoteFile]


class HubClient:
    """Metadata and byte ranges from the Hub (or any endpoint speaking its protocol).

    Args:
        endpoint: Hub URL; default ``HF_ENDPOINT`` (as huggingface_hub reads it) or huggingface.co.
        token: access token; default the one huggingface_hub finds (``HF_TOKEN``, ``hf auth login``).
    """

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token
        self._api = HfApi(endpoint=self.endpoint, token=token)
        self._repos: dict[tuple[str, str | None], RemoteRepo] = {}

    @property
    def has_token(self) -> bool:
        return bool(self.token or get_token())

    def repo(self, repo_id: str, revision: str | None = None) -> RemoteRepo:
        """Files, sizes and sha256 of ``repo_id`` at ``revision`` (default branch when ``None``).

        Raises:
            OfflineError, RemoteNotFoundError, GatedRepoError, DownloadError.
        """
        key = (repo_id, revision)
        if key not in self._repos:
            with self.translate_errors(repo_id, revision=revision):
                info = self._api.model_info(repo_id, revision=revision, files_metadata=True)
            files = {
                s.rfilename: RemoteFile(
                    path=s.rfilename,
                    size=int(s.lfs.size if s.lfs else (s.size or 0)),
                    sha256=s.lfs.sha256 if s.lfs else None,
                    blob_id=s.blob_id,
                )
                for s in info.siblings or []
            }
            if not info.sha:
                raise DownloadError(f"The Hub sent no commit id for {repo_id}; try again later.", repo_id=repo_id)
            repo = RemoteRepo(repo_id=info.id or repo_id, commit=info.sha, gated=bool(info.gated), files=files)
            self._repos[key] = repo
        return self._repos[key]

    def file_url(self, repo_id: str, commit: str, path: str) -> str:
        """The ``resolve`` URL of a file, pinned to a commit so every byte comes from one revision."""
        return hf_hub_url(repo_id, path, revision=commit, endpoint=self.endpoint)

    @contextmanager
    def open_range(self, repo_id: str, commit: str, path: str, start: int) -> Iterator[httpx2.Response]:
        """Stream a file from byte ``start`` (a ``Range: bytes=start-`` request when start > 0).

        The caller must check the status: 206 means the range was honoured, 200 means the server
        sent the whole file. 429/5xx answers are retried by huggingface_hub's backoff.
        """
        headers = build_hf_headers(token=self.token)
        # Byte offsets must count raw file bytes: never let a proxy compress the body.
        headers["Accept-Encoding"] = "identity"
        if start > 0:
            headers["Range"] = f"bytes={start}-"
        url = self.file_url(repo_id, commit, path)
        with (
            self.translate_errors(repo_id, revision=commit, path=path),
            http_stream_backoff(
                "GET",
                url,
                headers=headers,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                retry_on_exceptions=(),  # the downloader resumes transport errors itself, with a Range
                max_retries=3,
            ) as response,
        ):
            hf_raise_for_status(response)
            yield response

    @contextmanager
    def translate_errors(self, repo_id: str, *, revision: str | None = None, path: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub's and httpx's errors into gemma-local's (the original is chained)."""
        try:
            yield
        except OfflineModeIsEnabled as e:
            raise OfflineError(self.endpoint, reason="HF_HUB_OFFLINE is set", repo_id=repo_id) from e
        except HfGatedRepoError as e:
            raise GatedRepoError(repo_id, has_token=self.has_token, mirror=load_catalog().mirror_for(repo_id)) from e
        except RevisionNotFoundError as e:
            raise RemoteNotFoundError(
                f"{repo_id} has no revision {revision!r}; pass a commit sha, branch or tag that exists.",
                repo_id=repo_id,
                revision=revision,
            ) from e
        except EntryNotFoundError as e:
            raise RemoteNotFoundError(
                f"{repo_id} has no file {path!r} at {revision}.", repo_id=repo_id, revision=revision, path=path
            ) from e
        except RepositoryNotFoundError as e:
            hint = "" if self.has_token else " If it is private, set HF_TOKEN to a token that can read it."
            raise RemoteNotFoundError(
                f"No model repo {repo_id!r} on {self.endpoint}; check the spelling.{hint}",
                repo_id=repo_id,
                revision=revision,
            ) from e
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            if status in (401, 403):
                raise GatedRepoError(
                    repo_id, has_token=self.has_token, mirror=load_catalog().mirror_for(repo_id)
                ) from e
            raise DownloadError(
                f"The Hub answered HTTP {status} for {repo_id}{f'/{path}' if path else ''}; try again later "
                "(a partial download is kept and resumed).",
                repo_id=repo_id,
                path=path,
            ) from e
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as e:
            raise OfflineError(self.endpoint, reason=_short(e), repo_id=repo_id) from e


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
