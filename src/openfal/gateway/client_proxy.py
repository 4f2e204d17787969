"""The ``@fal-ai/client`` proxy protocol, served natively.

A browser app configured with ``proxyUrl: "http://<openfal>/api/fal/proxy"`` sends every
call to this route, with the real URL in ``x-fal-target-url``. Instead of forwarding it over
the network, openfal serves the target itself: the request is re-entered into the gateway
with the target's host, path and query, so host routing and every route apply unchanged.
Responses carry CORS headers so browser pages on other origins can read them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from openfal.gateway.hosts import PLATFORM_HOSTS
from openfal.gateway.http import json_response

TARGET_HEADER = "x-fal-target-url"
EXPOSED_HEADERS = "x-fal-request-id, x-fal-request-timeout-type, x-fal-error-type"


def cors_headers(request_headers: Headers) -> list[tuple[bytes, bytes]]:
    origin = request_headers.get("origin", "*")
    allowed = request_headers.get("access-control-request-headers",
                                  "authorization, content-type, x-fal-target-url")
    return [(b"access-control-allow-origin", origin.encode()),
            (b"vary", b"origin"),
            (b"access-control-allow-methods", b"GET, POST, PUT, OPTIONS"),
            (b"access-control-allow-headers", allowed.encode()),
            (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
            (b"access-control-max-age", b"600")]


class ClientProxy:
    """ASGI endpoint for ``/api/fal/proxy``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        extra = cors_headers(headers)
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return
        target = headers.get(TARGET_HEADER)
        parsed = urlsplit(target or "")
        own_host = headers.get("host", "")
        if not target or parsed.scheme not in ("http", "https") or (
                parsed.hostname not in PLATFORM_HOSTS and parsed.netloc != own_host):
            response = json_response({"detail": "Invalid request: x-fal-target-url must name "
                                      "a fal platform URL"}, 400)
            response.raw_headers.extend(extra)
            await response(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await scope["app"](_target_scope(scope, parsed), receive, send_with_cors)


def _target_scope(scope: Scope, target) -> Scope:
    headers = [(name, value) for name, value in scope["headers"]
               if name not in (b"host", TARGET_HEADER.encode())]
    headers.append((b"host", target.netloc.encode()))
    path = target.path or "/"
    return {**scope, "scheme": target.scheme, "path": path, "raw_path": path.encode(),
            "query_string": target.query.encode(), "headers": headers, "root_path": ""}
