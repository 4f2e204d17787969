"""Fetching what requests point at: data URIs and http(s) URLs, safely.

openfal fetches URLs that callers choose (media inputs, webhook targets), so every fetch
refuses addresses a caller must not reach through the server: loopback, private,
link-local (cloud metadata at 169.254.169.254 among them), multicast and other non-global
ranges, unless a deployment allows a network explicitly. The check is made on the address
actually connected to: the host name is resolved once, the address checked, and the
connection made to that address (TLS still verifies the host name through SNI), so a name
that resolves differently a second time (DNS rebinding) cannot slip through. Redirects are
followed by hand, each hop checked the same way. Every fetch is bounded in size and time.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
MAX_REDIRECTS = 5
_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    pass


@dataclass(frozen=True)
class NetworkPolicy:
    """Which addresses openfal may connect to on a caller's behalf."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> NetworkPolicy:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks if n))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached, or None when it may."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return None
        for kind in ("loopback", "link_local", "multicast", "unspecified", "private",
                     "reserved"):
            if getattr(address, f"is_{kind}"):
                return f"{address} is a {kind.replace('_', '-')} address"
        if not address.is_global:
            return f"{address} is not a public address"
        return None


PUBLIC_ONLY = NetworkPolicy()


@dataclass(frozen=True)
class DataURI:
    content_type: str
    data: bytes


def parse_data_uri(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> DataURI:
    match = _DATA_URI.match(uri)
    if match is None:
        raise FetchError("not a valid data URI")
    params = match["params"].split(";")[1:]
    payload = match["data"]
    if len(payload) * 3 // 4 > max_bytes:
        raise FetchError(f"data URI is larger than {max_bytes} bytes")
    if "base64" in params:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise FetchError("data URI is not valid base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return DataURI(match["type"] or "text/plain", data)


def check_url(url: str) -> None:
    """Refuse what can never be fetched: other schemes, malformed data URIs."""
    if url.startswith("data:"):
        parse_data_uri(url)
        return
    parsed, _ = _split(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FetchError("must be an http(s) URL or a data URI")


def check_public_url(url: str, policy: NetworkPolicy = PUBLIC_ONLY) -> None:
    """Refuse a URL openfal must not call on a caller's behalf (e.g. a webhook target):
    not http(s), or a host that is or resolves to a refused address."""
    parsed, port = _split(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FetchError("must be an http(s) URL")
    resolve_permitted(parsed.hostname, port or _default_port(parsed.scheme), policy)


def _split(url: str) -> tuple[urllib.parse.SplitResult, int | None]:
    """``url`` in parts, and its port; FetchError where urllib cannot read it (a broken
    IPv6 literal, a port that is not a number up to 65535)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        return parsed, parsed.port
    except ValueError as exc:
        raise FetchError(f"not a valid URL: {exc}") from None


def resolve_permitted(host: str, port: int, policy: NetworkPolicy) -> str:
    """An address of ``host`` that ``policy`` permits, or FetchError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host}: {exc}") from None
    reasons = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        reason = policy.refusal(address)
        if reason is None:
            return str(address)
        reasons.append(reason)
    raise FetchError(f"refused to connect to {host}: {reasons[0]}")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def pinned_request(client: httpx.Client | httpx.AsyncClient, method: str, url: str,
                   policy: NetworkPolicy, **kwargs) -> httpx.Request:
    """A request for ``url`` that connects to a checked address of its host, not to
    whatever the name resolves to later; TLS still checks the certificate for the name."""
    parsed, port = _split(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FetchError(f"refused to fetch {url}: only http(s) URLs")
    host = parsed.hostname
    address = resolve_permitted(host, port or _default_port(parsed.scheme), policy)
    netloc = f"[{address}]" if ":" in address else address
    if port:
        netloc += f":{port}"
    headers = {"host": parsed.netloc.rpartition("@")[2], **kwargs.pop("headers", {})}
    import httpx  # imported when first needed: a runner's cold start does without it

    try:
        return client.build_request(
            method, parsed._replace(netloc=netloc).geturl(), headers=headers,
            extensions={"sni_hostname": host}, **kwargs)
    except httpx.InvalidURL as exc:
        raise FetchError(f"not a valid URL: {exc}") from None


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def fetch_to_file(url: str, dest: Path, *, policy: NetworkPolicy = PUBLIC_ONLY,
                  max_bytes: int = DEFAULT_MAX_BYTES,
                  timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """Write what ``url`` points at to ``dest``; return its content type if known."""
    if url.startswith("data:"):
        parsed = parse_data_uri(url, max_bytes)
        dest.write_bytes(parsed.data)
        return parsed.content_type
    check_url(url)
    import httpx  # imported when first needed: a runner's cold start does without it

    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = _follow(client, url, policy)
            try:
                if response.status_code != 200:
                    raise FetchError(f"GET {url} answered {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"file is larger than {max_bytes} bytes")
                _copy_bounded(response, dest, max_bytes)
                return response.headers.get("content-type")
            finally:
                response.close()
    except httpx.HTTPError as exc:
        raise FetchError(f"could not fetch {url}: {exc}") from None


def _follow(client: httpx.Client, url: str, policy: NetworkPolicy) -> httpx.Response:
    for _ in range(MAX_REDIRECTS + 1):
        response = client.send(pinned_request(client, "GET", url, policy), stream=True)
        if not response.is_redirect:
            return response
        response.close()
        url = urllib.parse.urljoin(url, response.headers["location"])
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _copy_bounded(response: httpx.Response, dest: Path, max_bytes: int) -> None:
    size = 0
    with dest.open("wb") as out:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"file is larger than {max_bytes} bytes")
            out.write(chunk)
