"""The online providers against local HTTP servers on 127.0.0.1 that speak their APIs.

The Linkup provider goes through the real ``linkup-sdk`` client, pointed at the local server
with the SDK's own ``base_url`` argument; SearXNG through httpx. Each server can answer,
hang, or fail; the chain must fall through to the next provider in every failure case.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from gemma_local.errors import ProviderNotConfiguredError, SearchConfigError, SearchProviderError
from gemma_local.search import ProviderChain, SearchSettings, default_chain, run_search
from gemma_local.search.providers.linkup import LinkupProvider
from gemma_local.search.providers.local_index import LocalIndex, LocalIndexProvider
from gemma_local.search.providers.searxng import SearxngProvider

pytest.importorskip("linkup", reason="linkup-sdk is in the search extra")

API_KEY = "test-key-123"


class FakeServer:
    """A threaded HTTP server whose behaviour (``mode``) the test sets."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeServer:
        return self.server.fake  # type: ignore[attr-defined]

    def reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class LinkupHandler(_Handler):
    """``POST /v1/search`` as the Linkup API answers it (outputType searchResults)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path != "/v1/search":
            return self.reply(404, {"error": {"code": "NOT_FOUND", "message": "no such route"}})
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self.reply(401, {"error": {"code": "UNAUTHORIZED", "message": "Invalid API key"}})
        mode = self.fake.mode
        if mode == "slow":
            self.fake.release.wait(10)
        if mode == "error":
            return self.reply(500, {"error": {"code": "INTERNAL", "message": "boom"}})
        if mode == "noresult":
            return self.reply(400, {"error": {"code": "SEARCH_QUERY_NO_RESULT", "message": "nothing"}})
        results = [
            {"type": "text", "name": "Gemma 3 announced", "url": "https://blog.example/gemma3",
             "content": "Gemma 3 comes in 1B, 4B, 12B and 27B sizes.", "favicon": ""},
            {"type": "image", "name": "A logo", "url": "https://img.example/logo.png"},
            {"type": "text", "name": "Gemma on Kaggle", "url": "https://kaggle.example/gemma",
             "content": "Weights are available.", "favicon": "https://kaggle.example/favicon.ico"},
        ]
        return self.reply(200, {"results": results})


class SearxngHandler(_Handler):
    """``GET /search?q=…&format=json`` as a SearXNG instance answers it."""

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.fake.requests.append({"path": url.path, "query": query})
        mode = self.fake.mode
        if mode == "slow":
            self.fake.release.wait(10)
        if mode == "forbidden":
            return self.reply(403, "Forbidden", "text/html")
        if mode == "error":
            return self.reply(502, "Bad gateway", "text/html")
        if mode == "html":
            return self.reply(200, "<html>not json</html>", "text/html")
        results = [
            {"url": "https://en.wikipedia.example/wiki/Lisbon", "title": "Lisbon - Wikipedia",
             "content": "Lisbon is the capital of Portugal.", "engine": "wikipedia", "score": 3.5},
            {"url": "https://travel.example/lisbon", "title": "Lisbon travel guide", "content": None,
             "engine": "duckduckgo", "score": 1.0},
            {"url": "https://en.wikipedia.example/wiki/Lisbon", "title": "duplicate", "content": "dup"},
            {"title": "no url"},
        ]
        return self.reply(200, {"query": query.get("q", [""])[0], "number_of_results": 4, "results": results})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMMA_LOCAL_SEARXNG_URL", "GEMMA_LOCAL_SEARCH_PROVIDERS", "GEMMA_LOCAL_LINKUP_API_KEY",
                "GEMMA_LOCAL_LINKUP_BASE_URL", "GEMMA_LOCAL_SEARCH_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def linkup_server() -> Iterator[FakeServer]:
    server = FakeServer(LinkupHandler)
    yield server
    server.close()


@pytest.fixture
def searxng_server() -> Iterator[FakeServer]:
    server = FakeServer(SearxngHandler)
    yield server
    server.close()


@pytest.fixture
def local_provider(tmp_path: Path) -> LocalIndexProvider:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "gemma.md").write_text("# My Gemma notes\n\nGemma 3 runs offline with gemma-local.", encoding="utf-8")
    index = LocalIndex(tmp_path / "search.db")
    index.add([docs])
    return LocalIndexProvider(index)


def linkup(server: FakeServer, key: str = API_KEY) -> LinkupProvider:
    return LinkupProvider(key, base_url=f"{server.url}/v1")


def free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


# --- Linkup ---------------------------------------------------------------------------------


def test_linkup_maps_text_results_and_sends_the_documented_request(linkup_server: FakeServer) -> None:
    sources = linkup(linkup_server).search("gemma 3 sizes", limit=4, timeout=5.0)
    assert [(s.title, s.url, s.snippet, s.provider) for s in sources] == [
        ("Gemma 3 announced", "https://blog.example/gemma3", "Gemma 3 comes in 1B, 4B, 12B and 27B sizes.", "linkup"),
        ("Gemma on Kaggle", "https://kaggle.example/gemma", "Weights are available.", "linkup"),
    ]
    [request] = linkup_server.requests
    assert request["auth"] == f"Bearer {API_KEY}"
    assert request["body"] == {
        "q": "gemma 3 sizes", "depth": "standard", "outputType": "searchResults", "maxResults": 4}


def test_linkup_no_result_is_empty_and_failures_are_provider_errors(linkup_server: FakeServer) -> None:
    linkup_server.mode = "noresult"
    assert linkup(linkup_server).search("q", limit=3, timeout=5.0) == []
    linkup_server.mode = "error"
    with pytest.raises(SearchProviderError, match="Linkup search failed"):
        linkup(linkup_server).search("q", limit=3, timeout=5.0)
    linkup_server.mode = "ok"
    with pytest.raises(SearchProviderError, match="check LINKUP_API_KEY"):
        linkup(linkup_server, key="wrong").search("q", limit=3, timeout=5.0)


def test_linkup_timeout_is_a_timeout(linkup_server: FakeServer) -> None:
    linkup_server.mode = "slow"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        linkup(linkup_server).search("q", limit=3, timeout=0.3)
    assert time.monotonic() - started < 3.0


# --- SearXNG --------------------------------------------------------------------------------


def test_searxng_maps_results_and_skips_those_without_url(searxng_server: FakeServer) -> None:
    sources = SearxngProvider(searxng_server.url + "/").search("lisbon", limit=5, timeout=5.0)
    assert [(s.title, s.url, s.snippet, s.score) for s in sources] == [
        ("Lisbon - Wikipedia", "https://en.wikipedia.example/wiki/Lisbon", "Lisbon is the capital of Portugal.", 3.5),
        ("Lisbon travel guide", "https://travel.example/lisbon", "", 1.0),
        ("duplicate", "https://en.wikipedia.example/wiki/Lisbon", "dup", None),  # the chain drops it
    ]
    [request] = searxng_server.requests
    assert request["path"] == "/search"
    assert request["query"] == {"q": ["lisbon"], "format": ["json"], "pageno": ["1"]}
    assert len(SearxngProvider(searxng_server.url).search("lisbon", limit=1, timeout=5.0)) == 1


@pytest.mark.parametrize(
    ("mode", "message"),
    [("forbidden", "add `json` to `search.formats`"), ("error", "answered HTTP 502"), ("html", "sent no JSON")],
)
def test_searxng_failures_say_what_went_wrong(searxng_server: FakeServer, mode: str, message: str) -> None:
    searxng_server.mode = mode
    with pytest.raises(SearchProviderError, match=message):
        SearxngProvider(searxng_server.url).search("lisbon", limit=3, timeout=5.0)


def test_searxng_unreachable_and_timeout(searxng_server: FakeServer) -> None:
    with pytest.raises(SearchProviderError, match="unreachable"):
        SearxngProvider(free_port_url()).search("lisbon", limit=3, timeout=2.0)
    searxng_server.mode = "slow"
    with pytest.raises(TimeoutError, match=r"did not answer within 0\.3s"):
        SearxngProvider(searxng_server.url).search("lisbon", limit=3, timeout=0.3)


# --- the chain falls through ----------------------------------------------------------------


def test_chain_uses_the_first_provider_that_answers(
    linkup_server: FakeServer, searxng_server: FakeServer, local_provider: LocalIndexProvider
) -> None:
    chain = ProviderChain([linkup(linkup_server), SearxngProvider(searxng_server.url), local_provider], timeout_s=5.0)
    outcome = run_search("gemma 3 offline", chain)
    assert outcome.provider == "linkup"
    assert [s.url for s in outcome.sources] == ["https://blog.example/gemma3", "https://kaggle.example/gemma"]
    assert [a.status for a in outcome.attempts] == ["ok"]
    assert searxng_server.requests == []  # not asked once Linkup answered


def test_timeout_then_error_fall_through_to_the_local_index(
    linkup_server: FakeServer, searxng_server: FakeServer, local_provider: LocalIndexProvider
) -> None:
    linkup_server.mode = "slow"
    searxng_server.mode = "error"
    chain = ProviderChain(
        [linkup(linkup_server), SearxngProvider(searxng_server.url), local_provider], timeout_s=0.5
    )
    started = time.monotonic()
    outcome = run_search("gemma 3 offline", chain)
    elapsed = time.monotonic() - started
    assert outcome.provider == "local"
    assert [s.title for s in outcome.sources] == ["My Gemma notes"]
    assert [(a.provider, a.status) for a in outcome.attempts] == [
        ("linkup", "timeout"), ("searxng", "error"), ("local", "ok")]
    assert 0.4 < outcome.attempts[0].elapsed_s < 2.0
    assert outcome.attempts[1].detail == f"SearXNG at {searxng_server.url} answered HTTP 502."
    assert elapsed < 4.0  # the hung server did not hold the answer up
    assert outcome.note is None


def test_offline_network_falls_through_and_no_results_say_so(local_provider: LocalIndexProvider) -> None:
    chain = ProviderChain(
        [LinkupProvider(API_KEY, base_url=free_port_url() + "/v1"), SearxngProvider(free_port_url()), local_provider],
        timeout_s=2.0,
    )
    outcome = run_search("gemma", chain)
    assert outcome.provider == "local"
    assert [a.status for a in outcome.attempts] == ["error", "error", "ok"]

    assert "Linkup search failed: ConnectError" in (outcome.attempts[0].detail or "")

    # Both failed a moment ago: skipped, so an offline laptop does not wait for them each time.
    nothing = run_search("zeppelin", chain)
    assert nothing.sources == () and nothing.provider is None
    assert [a.status for a in nothing.attempts] == ["skipped", "skipped", "empty"]
    assert nothing.note == (
        "No sources found for this query (searched: local). "
        "linkup (skipped: failed 0s ago; tried again after 30s); "
        "searxng (skipped: failed 0s ago; tried again after 30s)."
    )


# --- configuration --------------------------------------------------------------------------


def test_default_chain_puts_configured_online_providers_first(
    monkeypatch: pytest.MonkeyPatch, linkup_server: FakeServer, searxng_server: FakeServer
) -> None:
    assert default_chain().names == ["local", "zim"]
    monkeypatch.setenv("LINKUP_API_KEY", API_KEY)
    monkeypatch.setenv("GEMMA_LOCAL_LINKUP_BASE_URL", f"{linkup_server.url}/v1")
    assert default_chain().names == ["linkup", "local", "zim"]
    monkeypatch.setenv("GEMMA_LOCAL_SEARXNG_URL", searxng_server.url)
    monkeypatch.setenv("GEMMA_LOCAL_SEARCH_TIMEOUT", "1.5")
    chain = default_chain()
    assert chain.names == ["linkup", "searxng", "local", "zim"]
    assert chain.timeout_s == 1.5
    # The configured Linkup really is the local server.
    outcome = run_search("gemma 3", chain)
    assert (outcome.provider, len(outcome.sources)) == ("linkup", 2)

    monkeypatch.setenv("GEMMA_LOCAL_SEARCH_PROVIDERS", "searxng, local")
    assert default_chain().names == ["searxng", "local"]


def test_explicit_providers_must_exist_and_be_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SearchConfigError, match=r"Unknown search provider 'bing'.*known: linkup, searxng, local, zim"):
        default_chain(SearchSettings(search_providers="local,bing"))
    with pytest.raises(ProviderNotConfiguredError, match="set LINKUP_API_KEY"):
        default_chain(SearchSettings(search_providers="linkup"))
    with pytest.raises(ProviderNotConfiguredError, match="GEMMA_LOCAL_SEARXNG_URL"):
        default_chain(SearchSettings(search_providers="searxng"))
