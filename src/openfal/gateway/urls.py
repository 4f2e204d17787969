"""The URLs the gateway hands out. One place, so every route and host agrees on them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from openfal.files.base import file_url
from openfal.gateway.hosts import queue_prefix

__all__ = ["base_url", "file_url", "queue_urls", "schema_url", "signed_upload_url"]


_BASE_URLS: dict[tuple[Any, ...], str] = {}  # by what a request's base URL is made of
_BASE_URLS_KEPT = 256


def base_url(request: Request) -> str:
    """The URL the caller reached this server at (scheme and Host, as Starlette reads them),
    remembered per scheme, Host and root path: a poll hands out three URLs built on it."""
    scope = request.scope
    key = (scope.get("scheme"), request.headers.get("host"), scope.get("server"),
           scope.get("root_path", ""))
    url = _BASE_URLS.get(key)
    if url is None:
        if len(_BASE_URLS) >= _BASE_URLS_KEPT:
            _BASE_URLS.clear()
        url = _BASE_URLS[key] = str(request.base_url).rstrip("/")
    return url


def queue_urls(request: Request, app_id: str, request_id: str) -> dict[str, str]:
    prefix = queue_prefix(request.scope)
    response_url = f"{base_url(request)}{prefix}/{app_id}/requests/{request_id}"
    return {"response_url": response_url, "status_url": response_url + "/status",
            "cancel_url": response_url + "/cancel"}


def schema_url(request: Request, endpoint_id: str) -> str:
    return f"{base_url(request)}/api/openapi/queue/openapi.json?endpoint_id={endpoint_id}"


def signed_upload_url(public_url: str, upload_id: str, signature: str) -> str:
    """Where a client PUTs the bytes of an initiated upload (parts go under it)."""
    return f"{public_url}/storage/uploads/{upload_id}?{urlencode({'signature': signature})}"
