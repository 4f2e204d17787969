"""Fetching the files requests point at: data URIs, http(s) URLs, and this server's files.

Every fetch is bounded: at most ``max_bytes`` and ``timeout`` seconds. Failures raise
:class:`FetchError` with a reason a caller can be shown.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
_DATA_URI = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


class FetchError(Exception):
    pass


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
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise FetchError("must be an http(s) URL or a data URI")


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def fetch_to_file(url: str, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                  timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """Write what ``url`` points at to ``dest``; return its content type if known."""
    if url.startswith("data:"):
        parsed = parse_data_uri(url, max_bytes)
        dest.write_bytes(parsed.data)
        return parsed.content_type
    check_url(url)
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise FetchError(f"GET {url} answered {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"file is larger than {max_bytes} bytes")
            _copy_bounded(response, dest, max_bytes)
            return response.headers.get("content-type")
    except httpx.HTTPError as exc:
        raise FetchError(f"could not fetch {url}: {exc}") from None


def _copy_bounded(response: httpx.Response, dest: Path, max_bytes: int) -> None:
    size = 0
    with dest.open("wb") as out:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"file is larger than {max_bytes} bytes")
            out.write(chunk)
