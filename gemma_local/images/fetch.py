"""Fetch an image from an http(s) URL without letting a request reach the server's own network.

The server fetches remote images only when its operator turns it on (``--allow-remote-images``);
otherwise clients must send images inline. When on, every fetch follows these rules:

* Only ``http`` and ``https``; no credentials in the URL. ``file:``, ``ftp:``, ``data:`` … are
  never fetched here (``data:`` URIs are decoded by the caller).
* The host is resolved once with ``getaddrinfo``, and **every** address it resolves to must be
  public: loopback, private (RFC 1918, ULA), link-local (including 169.254.169.254, the cloud
  metadata address), multicast, reserved, unspecified, carrier-grade NAT and other non-global
  ranges are refused, including when wrapped in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
  ``64:ff9b::/96``, 6to4, Teredo). A host the operator lists in ``allowed_hosts`` (matched by
  the name or IP literal as written in the URL) skips this check.
* The connection goes to the address that was checked, not to a second DNS lookup (which a
  DNS-rebinding attacker could answer differently): the request URL carries the IP literal, the
  ``Host`` header the original name, and for https the TLS SNI and certificate check use the
  original name too (httpcore's ``sni_hostname`` request extension).
* Redirects are followed by hand, at most ``max_redirects``, and each hop is checked like the
  first (scheme, host, addresses).
* Environment proxies and ``.netrc`` are ignored (``trust_env=False``): a proxy would resolve
  the name itself and defeat the address check.
* The body is read up to ``max_bytes`` (a larger ``Content-Length`` is refused before reading);
  ``Accept-Encoding: identity`` is sent and compressed bodies are refused, so no
  decompression bomb can expand in memory.
* ``timeout_s`` bounds the whole fetch, redirects included: each network wait gets the time
  left, and the deadline is checked between body chunks (a server dripping bytes is cut off
  within about twice ``timeout_s``).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from gemma_local.errors import ImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_REDIRECTS = 3

_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_USER_AGENT = "gemma-local (image fetch)"


def normalise_host(host: str) -> str:
    """A host name or IP literal in the form ``allowed_hosts`` and URLs are compared in.

    Args:
        host: ``Example.COM.``, ``[::1]``, ``127.0.0.1`` …

    Returns:
        Lower case, no trailing dot, no IPv6 brackets, IP literals in canonical form.
    """
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@dataclass(frozen=True)
class RemoteImagePolicy:
    """Whether and how the server fetches images from http(s) URLs.

    Attributes:
        enabled: Off by default: clients must send images inline.
        allowed_hosts: Hosts (names or IP literals, as written in URLs) exempt from the
            private-address check, e.g. an intranet image server. Public hosts need no entry.
        max_bytes: Largest body accepted.
        timeout_s: Time allowed for the whole fetch, redirects included.
        max_redirects: Redirect hops followed (each re-checked).
    """

    enabled: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_hosts", frozenset(normalise_host(h) for h in self.allowed_hosts))

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` was explicitly allowed by the operator (skips the address check)."""
        return normalise_host(host) in self.allowed_hosts


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address must not be fetched from, or None for a public address.

    Args:
        ip: An IPv4 or IPv6 address.

    Returns:
        A short category (``loopback``, ``private``, ``link-local``, ``multicast``, ``reserved``,
        ``unspecified``, ``non-public``) or None.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        # Addresses that carry an IPv4 address inside reach that IPv4 host: judge it instead.
        if ip.ipv4_mapped is not None:
            return blocked_reason(ip.ipv4_mapped)
        if ip in _NAT64:
            return blocked_reason(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and (inner := blocked_reason(ip.sixtofour)):
            return inner
        if ip.teredo is not None and (inner := blocked_reason(ip.teredo[1])):
            return inner
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    )
    for name, hit in checks:
        if hit:
            return name
    return None if ip.is_global else "non-public"


def fetch_image(url: str, policy: RemoteImagePolicy, *, param: str | None = None) -> bytes:
    """Download an image's bytes under ``policy`` (blocking; run it in a worker thread).

    Args:
        url: An ``http://`` or ``https://`` URL.
        policy: The server's remote-image policy.
        param: The request parameter the URL came from, for the error.

    Returns:
        The response body (not yet validated as an image).

    Raises:
        ImageError: ``remote_images_disabled``, ``bad_url``, ``blocked_address``, ``too_large``
            or ``fetch_failed`` (DNS, connection, TLS, HTTP status, timeout, too many redirects).
    """
    if not policy.enabled:
        raise ImageError(
            "This server does not fetch images from URLs. Send the image inline as a data: URI "
            "(data:image/png;base64,…), or start the server with --allow-remote-images.",
            reason="remote_images_disabled",
            param=param,
        )
    deadline = time.monotonic() + policy.timeout_s
    current = url
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        for _hop in range(policy.max_redirects + 1):
            target = _parse(current, param)
            addresses = _checked_addresses(target, policy, param)
            response = _send(client, target, addresses, deadline, policy, param)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    current = str(target.url.join(location))
                    continue
                if not 200 <= response.status_code < 300:
                    raise ImageError(
                        f"Fetching the image at {_shown(target.url)} failed: HTTP {response.status_code} "
                        f"{response.reason_phrase}.",
                        reason="fetch_failed",
                        param=param,
                    )
                return _read_body(response, target, deadline, policy, param)
            finally:
                response.close()
    raise ImageError(
        f"Fetching the image at {_shown(httpx.URL(url))} took more than {policy.max_redirects} redirects.",
        reason="fetch_failed",
        param=param,
    )


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str  # ASCII (IDNA) host, no brackets
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.url.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse(url: str, param: str | None) -> _Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as e:
        raise ImageError(f"The image URL is not a valid URL ({e}).", reason="bad_url", param=param) from e
    if parsed.scheme not in ("http", "https"):
        raise ImageError(
            f"Image URLs must be http(s) or data: URIs, not {parsed.scheme or 'relative'}: URLs.",
            reason="bad_url",
            param=param,
        )
    if parsed.userinfo:
        raise ImageError("Image URLs must not contain credentials (user:password@).", reason="bad_url", param=param)
    host = parsed.raw_host.decode("ascii").lower()
    if not host:
        raise ImageError("The image URL has no host.", reason="bad_url", param=param)
    return _Target(parsed, host, parsed.port or (443 if parsed.scheme == "https" else 80))


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in resolver order (tests replace this)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _checked_addresses(target: _Target, policy: RemoteImagePolicy, param: str | None) -> list[str]:
    """The addresses to connect to, all checked (or the host explicitly allowed)."""
    try:
        addresses = [str(ipaddress.ip_address(target.host))]
    except ValueError:
        try:
            addresses = _resolve(target.host, target.port)
        except (OSError, UnicodeError) as e:
            raise ImageError(
                f"Cannot resolve the image host {target.host!r} ({e}). Check the URL, or send the image inline.",
                reason="fetch_failed",
                param=param,
            ) from e
    if not addresses:
        raise ImageError(f"The image host {target.host!r} has no address.", reason="fetch_failed", param=param)
    if policy.host_allowed(target.host):
        return addresses
    for address in addresses:
        reason = blocked_reason(ipaddress.ip_address(address.split("%", 1)[0]))
        if reason:
            raise ImageError(
                f"The image URL's host {target.host!r} resolves to {address}, a {reason} address; this server "
                "only fetches images from public addresses. An operator can allow this host with "
                "--allowed-image-host (GEMMA_LOCAL_ALLOWED_IMAGE_HOSTS).",
                reason="blocked_address",
                param=param,
            )
    return addresses


def _send(
    client: httpx.Client,
    target: _Target,
    addresses: Iterable[str],
    deadline: float,
    policy: RemoteImagePolicy,
    param: str | None,
) -> httpx.Response:
    """GET the target at the first checked address that accepts a connection (response streamed)."""
    last_error: Exception | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        request = client.build_request(
            "GET",
            target.url.copy_with(host=address),  # pinned: no second DNS lookup
            headers={
                "Host": target.host_header,
                "Accept": "image/*",
                "Accept-Encoding": "identity",
                "User-Agent": _USER_AGENT,
            },
            extensions={"sni_hostname": target.host},
            timeout=httpx.Timeout(remaining),
        )
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError as e:
            last_error = e  # try the host's next address
        except httpx.TimeoutException as e:
            raise _timeout(target, policy, param) from e
        except httpx.HTTPError as e:
            raise _failed(target, e, param) from e
    if last_error is None:
        raise _timeout(target, policy, param)
    raise _failed(target, last_error, param) from last_error


def _read_body(
    response: httpx.Response, target: _Target, deadline: float, policy: RemoteImagePolicy, param: str | None
) -> bytes:
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ImageError(
            f"The image server at {_shown(target.url)} sent a {encoding}-compressed body; only uncompressed "
            "image files are accepted.",
            reason="fetch_failed",
            param=param,
        )
    too_large = ImageError(
        f"The image at {_shown(target.url)} is larger than the limit of {policy.max_bytes:,} bytes.",
        reason="too_large",
        param=param,
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise too_large
    body = bytearray()
    try:
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > policy.max_bytes:
                raise too_large
            if time.monotonic() > deadline:
                raise _timeout(target, policy, param)
    except httpx.TimeoutException as e:
        raise _timeout(target, policy, param) from e
    except httpx.HTTPError as e:
        raise _failed(target, e, param) from e
    return bytes(body)


def _shown(url: httpx.URL) -> str:
    """The URL for an error message, without its query string (which may carry tokens)."""
    return str(url.copy_with(query=None, fragment=None))


def _timeout(target: _Target, policy: RemoteImagePolicy, param: str | None) -> ImageError:
    return ImageError(
        f"Fetching the image at {_shown(target.url)} timed out after {policy.timeout_s:g}s. "
        "Send the image inline as a data: URI instead.",
        reason="fetch_failed",
        param=param,
    )


def _failed(target: _Target, error: Exception, param: str | None) -> ImageError:
    return ImageError(
        f"Fetching the image at {_shown(target.url)} failed ({type(error).__name__}: {error}). "
        "Check the URL, or send the image inline as a data: URI.",
        reason="fetch_failed",
        param=param,
    )
