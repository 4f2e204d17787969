"""The gateway's ASGI application. All routing lives in this table."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from openfal.gateway import platform_routes, queue, realtime, run, storage_routes, tokens
from openfal.gateway.client_proxy import ClientProxy
from openfal.gateway.hosts import HostRouting
from openfal.gateway.http import HTTPError, json_response
from openfal.server import Platform

log = logging.getLogger(__name__)

_BY_ID = "/queue/{owner}/{app}/requests/{request_id}"
_SIGNED_UPLOAD = "/storage/uploads/{upload_id}"
_CDN_MULTIPART = "/files/{file_id}/{file_name}/multipart/{upload_id}"

ROUTES = [
    Route("/health", platform_routes.health, methods=["GET"]),
    Route("/api/apps", platform_routes.apps, methods=["GET"]),
    Route("/api/runners", platform_routes.runners, methods=["GET"]),
    Route("/api/fal/proxy", ClientProxy(), methods=["GET", "POST", "PUT", "OPTIONS"]),
    Route("/api/requests/{request_id}/attempts", platform_routes.attempts, methods=["GET"]),
    Route("/api/openapi/queue/openapi.json", platform_routes.openapi, methods=["GET"]),
    Route(_BY_ID + "/status", queue.status, methods=["GET"]),
    Route(_BY_ID + "/status/stream", queue.status_stream, methods=["GET"]),
    Route(_BY_ID + "/cancel", queue.cancel, methods=["PUT"]),
    Route(_BY_ID, queue.result, methods=["GET"]),
    Route("/storage/auth/token", storage_routes.cdn_token, methods=["POST"]),
    Route("/storage/upload/initiate", storage_routes.initiate, methods=["POST"]),
    Route("/storage/upload/initiate-multipart", storage_routes.initiate, methods=["POST"]),
    Route(_SIGNED_UPLOAD, storage_routes.put_signed_upload, methods=["PUT"]),
    Route(_SIGNED_UPLOAD + "/complete", storage_routes.complete_signed, methods=["POST"]),
    Route(_SIGNED_UPLOAD + "/{part_number:int}", storage_routes.put_signed_part,
          methods=["PUT"]),
    Route("/files/upload", storage_routes.upload, methods=["POST"]),
    Route("/files/upload/multipart", storage_routes.create_multipart, methods=["POST"]),
    Route(_CDN_MULTIPART + "/complete", storage_routes.complete_cdn, methods=["POST"]),
    Route(_CDN_MULTIPART + "/{part_number:int}", storage_routes.put_cdn_part, methods=["PUT"]),
    Route("/files/{file_path:path}", storage_routes.serve_file, methods=["GET"]),
    Route("/storage/{rest:path}", storage_routes.preflight, methods=["OPTIONS"]),
    Route("/files/{rest:path}", storage_routes.preflight, methods=["OPTIONS"]),
    Route("/queue/{endpoint_id:path}", queue.submit, methods=["POST"]),
    Route("/tokens/", tokens.mint, methods=["POST"]),
    Route("/tokens", tokens.mint, methods=["POST"]),
    Route("/{endpoint_id:path}/stream", run.stream, methods=["POST"]),
    Route("/{endpoint_id:path}", run.run, methods=["POST", "GET"]),
    WebSocketRoute("/{endpoint_id:path}", realtime.session),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return exc.response()


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"detail": exc.detail}, exc.status_code, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return json_response({"detail": "Internal Server Error", "error_type": "internal_error"},
                         500, {"x-fal-error-type": "internal_error"})


def create_app(platform: Platform,
               on_ready: Callable[[Platform], None] | None = None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await platform.start()
        if on_ready is not None:
            on_ready(platform)
        try:
            yield
        finally:
            await platform.stop()

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(HostRouting)],
        lifespan=lifespan,
        exception_handlers={HTTPError: _http_error, HTTPException: _starlette_error,
                            Exception: _unexpected_error},
    )
    app.state.platform = platform
    return app
