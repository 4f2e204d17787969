"""The gateway's router asks only the routes that can match a path; it must answer exactly
as Starlette's plain router over the same table (the route chosen, 404, 405, redirects)."""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, Router, WebSocketRoute

from openfal.gateway.app import ROUTES, SegmentRouter

PATHS = [
    "/", "/health", "/health/", "/openapi.json", "/.well-known/jwks.json", "/metrics",
    "/v1/models", "/v1/models/requests", "/v1/models/requests/by-endpoint",
    "/v1/models/requests/abc/payloads", "/api/keys", "/api/keys/k1", "/api/worker/claim",
    "/api/requests/abc/attempts", "/api/fal/proxy",
    "/queue/openfal/echo", "/queue/openfal/echo/requests/abc",
    "/queue/openfal/echo/requests/abc/status", "/queue/openfal/echo/requests/abc/status/stream",
    "/queue/openfal/echo/requests/abc/cancel", "/queue/fal-ai/flux/dev/requests/abc/status",
    "/queue/fal-ai/flux/dev", "/storage/upload/initiate", "/storage/uploads/u1",
    "/storage/uploads/u1/3", "/storage/anything", "/files/upload", "/files/f1/name.png",
    "/files/f1/name.png/multipart/u1/2", "/tokens", "/tokens/", "/openfal/echo",
    "/openfal/echo/stream", "/fal-ai/flux/dev", "/fal-ai/flux-kontext-lora/inpaint",
    "/queue", "/files", "/api", "/v1", "/nothing/here/",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def numbered_table() -> list:
    """The table with each route answering its own index."""
    named = []
    for index, route in enumerate(ROUTES):
        if isinstance(route, WebSocketRoute):
            continue

        async def endpoint(request: Request, index: int = index) -> PlainTextResponse:
            return PlainTextResponse(f"{index} {sorted(request.path_params.items())}")
        named.append(Route(route.path, endpoint, methods=sorted(route.methods or [])))
    return named


@pytest.mark.parametrize("method", METHODS)
async def test_the_segment_router_answers_as_the_plain_router(method: str) -> None:
    routes = numbered_table()
    plain = httpx.AsyncClient(transport=httpx.ASGITransport(Router(routes)),
                              base_url="http://gateway")
    ours = httpx.AsyncClient(transport=httpx.ASGITransport(SegmentRouter(routes)),
                             base_url="http://gateway")
    async with plain, ours:
        for path in PATHS:
            expected = await plain.request(method, path)
            got = await ours.request(method, path)
            assert (got.status_code, got.text, got.headers.get("location")) == (
                expected.status_code, expected.text, expected.headers.get("location")), path
