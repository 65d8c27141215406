"""Remote image URLs: off by default, no SSRF, every redirect re-checked, size and time limits.

Everything runs against a local ``http.server`` on 127.0.0.1; no test touches another address
(blocked addresses are refused before any connection is attempted, which the tests check).
"""

from __future__ import annotations

import gzip
import http.server
import io
import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from PIL import Image

from gemma_local.errors import ImageError
from gemma_local.images import ImagePolicy, RemoteImagePolicy, fetch_image, image_from_url_or_data, load_image
from gemma_local.images import fetch as fetch_module
from gemma_local.images.fetch import blocked_reason, normalise_host


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 8), (0, 128, 255)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
BIG = 64 * 1024


@dataclass
class Seen:
    """What the test server received: paths and Host headers, in order."""

    requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: Seen
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.requests.append((self.path, self.headers.get("Host", "")))
        port = self.server.server_address[1]
        routes = {
            "/img.png": lambda: self._send(200, PNG, {"Content-Type": "image/png"}),
            "/text": lambda: self._send(200, b"<html>not an image</html>", {"Content-Type": "image/png"}),
            "/missing": lambda: self._send(404, b"nope"),
            "/to-self": lambda: self._send(302, headers={"Location": "/img.png"}),
            "/to-metadata": lambda: self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
            "/to-localhost": lambda: self._send(302, headers={"Location": f"http://localhost:{port}/img.png"}),
            "/to-ipv6-loopback": lambda: self._send(307, headers={"Location": f"http://[::1]:{port}/img.png"}),
            "/to-file": lambda: self._send(302, headers={"Location": "file:///etc/passwd"}),
            "/loop": lambda: self._send(302, headers={"Location": "/loop"}),
            "/declared-big": lambda: self._send(200, b"x" * BIG, {"Content-Type": "image/png"}),
            "/gzip": lambda: self._send(200, gzip.compress(PNG), {"Content-Encoding": "gzip"}),
        }
        if self.path in routes:
            routes[self.path]()
        elif self.path == "/chunked-big":
            self._chunked([b"\x89PNG" + b"x" * 8188] + [b"x" * 8192] * 32)
        elif self.path == "/slow":
            time.sleep(2.0)
            self._send(200, PNG)
        elif self.path == "/drip":
            self._chunked([PNG[i : i + 4] for i in range(0, len(PNG), 4)], pause=0.15)
        else:
            self._send(404)

    def _chunked(self, pieces: list[bytes], pause: float = 0.0) -> None:
        """A body without Content-Length (chunked), optionally sent slowly."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in pieces:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
                time.sleep(pause)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


@dataclass
class ImageServer:
    port: int
    seen: Seen

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[http.server.ThreadingHTTPServer, Seen]]:
    seen = Seen()
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-image-server", daemon=True)
    thread.start()
    yield server, seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(_server: tuple[http.server.ThreadingHTTPServer, Seen]) -> ImageServer:
    httpd, seen = _server
    seen.requests.clear()
    return ImageServer(httpd.server_address[1], seen)


def allow_local(**kwargs) -> RemoteImagePolicy:
    """Remote fetching on, with the test server's host explicitly allowed."""
    return RemoteImagePolicy(enabled=True, allowed_hosts=frozenset({"127.0.0.1"}), **kwargs)


def refused(call, reason: str) -> ImageError:
    with pytest.raises(ImageError) as info:
        call()
    assert info.value.reason == reason, str(info.value)
    return info.value


# --- policy --------------------------------------------------------------------------------


def test_disabled_by_default(server: ImageServer) -> None:
    error = refused(lambda: fetch_image(server.url("/img.png"), RemoteImagePolicy()), "remote_images_disabled")
    assert "--allow-remote-images" in str(error)
    refused(lambda: image_from_url_or_data(server.url("/img.png")), "remote_images_disabled")
    assert server.seen.requests == []


def test_explicitly_allowed_host_works(server: ImageServer) -> None:
    assert fetch_image(server.url("/img.png"), allow_local()) == PNG
    part = image_from_url_or_data(server.url("/img.png"), ImagePolicy(remote=allow_local()))
    assert part.digest == load_image(PNG).digest
    assert server.seen.requests == [("/img.png", f"127.0.0.1:{server.port}")] * 2


def test_loopback_not_allowed_is_refused_before_connecting(server: ImageServer) -> None:
    policy = RemoteImagePolicy(enabled=True)
    for host in ("127.0.0.1", "localhost", "[::1]", "127.1.2.3"):
        error = refused(lambda host=host: fetch_image(server.url("/img.png", host), policy), "blocked_address")
        assert "loopback" in str(error) and "--allowed-image-host" in str(error)
    assert server.seen.requests == []


def test_allowing_one_host_does_not_allow_its_other_names(server: ImageServer) -> None:
    # 127.0.0.1 is allowed; "localhost" is a different host name, so it is still checked.
    refused(lambda: fetch_image(server.url("/img.png", "localhost"), allow_local()), "blocked_address")
    assert server.seen.requests == []


@pytest.mark.parametrize("path", ["/to-metadata", "/to-localhost", "/to-ipv6-loopback"])
def test_redirect_to_a_private_address_is_refused(server: ImageServer, path: str) -> None:
    error = refused(lambda: fetch_image(server.url(path), allow_local()), "blocked_address")
    assert "resolves to" in str(error)
    assert server.seen.paths == [path]  # the redirect target was never requested


def test_redirect_within_an_allowed_host_is_followed(server: ImageServer) -> None:
    assert fetch_image(server.url("/to-self"), allow_local()) == PNG
    assert server.seen.paths == ["/to-self", "/img.png"]


def test_redirect_to_file_is_refused(server: ImageServer) -> None:
    refused(lambda: fetch_image(server.url("/to-file"), allow_local()), "bad_url")


def test_too_many_redirects(server: ImageServer) -> None:
    error = refused(lambda: fetch_image(server.url("/loop"), allow_local(max_redirects=2)), "fetch_failed")
    assert "more than 2 redirects" in str(error)
    assert server.seen.paths == ["/loop"] * 3


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/img.png",
        "gopher://127.0.0.1/",
        "http://user:secret@127.0.0.1/img.png",
        "/img.png",
    ],
)
def test_only_plain_http_urls(url: str, server: ImageServer) -> None:
    refused(lambda: fetch_image(url, allow_local()), "bad_url")
    assert server.seen.requests == []


# --- size, time, errors ----------------------------------------------------------------------


def test_declared_oversize_body_is_refused(server: ImageServer) -> None:
    error = refused(lambda: fetch_image(server.url("/declared-big"), allow_local(max_bytes=BIG - 1)), "too_large")
    assert f"{BIG - 1:,} bytes" in str(error)
    assert len(fetch_image(server.url("/declared-big"), allow_local(max_bytes=BIG))) == BIG


def test_streamed_oversize_body_is_cut_off(server: ImageServer) -> None:
    refused(lambda: fetch_image(server.url("/chunked-big"), allow_local(max_bytes=20_000)), "too_large")


def test_timeout_waiting_for_the_response(server: ImageServer) -> None:
    started = time.monotonic()
    error = refused(lambda: fetch_image(server.url("/slow"), allow_local(timeout_s=0.3)), "fetch_failed")
    assert "timed out after 0.3s" in str(error)
    assert time.monotonic() - started < 1.5


def test_a_dripping_body_is_cut_off_at_the_deadline(server: ImageServer) -> None:
    started = time.monotonic()
    error = refused(lambda: fetch_image(server.url("/drip"), allow_local(timeout_s=0.5)), "fetch_failed")
    assert "timed out" in str(error)
    assert time.monotonic() - started < 1.5


def test_http_error_status(server: ImageServer) -> None:
    error = refused(lambda: fetch_image(server.url("/missing?token=secret"), allow_local()), "fetch_failed")
    assert "HTTP 404" in str(error) and "secret" not in str(error)


def test_compressed_body_is_refused(server: ImageServer) -> None:
    refused(lambda: fetch_image(server.url("/gzip"), allow_local()), "fetch_failed")


def test_fetched_non_image_is_a_bad_image(server: ImageServer) -> None:
    refused(lambda: image_from_url_or_data(server.url("/text"), ImagePolicy(remote=allow_local())), "not_an_image")


def test_connection_refused_is_fetch_failed() -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused(lambda: fetch_image(f"http://127.0.0.1:{port}/x.png", allow_local()), "fetch_failed")


# --- DNS: the checked address is the one connected to ---------------------------------------


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]

    monkeypatch.setattr(fetch_module, "_resolve", resolve)
    return asked


def test_connects_to_the_resolved_address_with_the_original_host(
    server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = fake_dns(monkeypatch, {"images.example": ["127.0.0.1"]})
    policy = RemoteImagePolicy(enabled=True, allowed_hosts=frozenset({"IMAGES.example."}))
    assert fetch_image(server.url("/img.png", "images.example"), policy) == PNG
    # One lookup, and the server saw the name in Host while the socket went to the checked IP.
    assert asked == ["images.example"]
    assert server.seen.requests == [("/img.png", f"images.example:{server.port}")]


def test_a_public_name_resolving_to_a_private_address_is_refused(
    server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"rebind.example": ["127.0.0.1"], "mixed.example": ["93.184.216.34", "10.1.2.3"]})
    policy = RemoteImagePolicy(enabled=True)
    refused(lambda: fetch_image(server.url("/img.png", "rebind.example"), policy), "blocked_address")
    error = refused(lambda: fetch_image("http://mixed.example/img.png", policy), "blocked_address")
    assert "10.1.2.3, a private address" in str(error)
    assert server.seen.requests == []


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})
    error = refused(
        lambda: fetch_image("https://nowhere.example/x.png", RemoteImagePolicy(enabled=True)), "fetch_failed"
    )
    assert "Cannot resolve" in str(error)


# --- address classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),
        ("2002:7f00:1::", "loopback"),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == reason


def test_host_normalisation() -> None:
    assert normalise_host("Images.Example.") == "images.example"
    assert normalise_host("[::1]") == "::1"
    assert normalise_host("0:0:0:0:0:0:0:1") == "::1"
    policy = RemoteImagePolicy(allowed_hosts=frozenset({"[0::1]", "Intranet."}))
    assert policy.host_allowed("::1") and policy.host_allowed("intranet")
    assert not policy.host_allowed("localhost")


def test_https_sends_the_original_name_as_sni_and_verifies_the_certificate(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinning the IP must not weaken TLS: SNI and the certificate check use the URL's host name."""
    import contextlib
    import shutil
    import socket
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=images.example",
         "-addext", "subjectAltName=DNS:images.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        # The client refuses our self-signed certificate, as it must: the handshake fails here.
        with conn, contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(conn, server_side=True).close()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    fake_dns(monkeypatch, {"images.example": ["127.0.0.1"]})
    policy = RemoteImagePolicy(enabled=True, allowed_hosts=frozenset({"images.example"}), timeout_s=5)
    try:
        error = refused(lambda: fetch_image(f"https://images.example:{port}/img.png", policy), "fetch_failed")
    finally:
        thread.join(5)
        listener.close()
    assert names == ["images.example"]
    assert "CERTIFICATE_VERIFY_FAILED" in str(error) or "certificate" in str(error).lower()
