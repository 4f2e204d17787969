"""The gateway's ASGI application. All routing lives in this table."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

from openfal.dispatcher.dispatcher import ShuttingDown, shutting_down
from openfal.gateway import (
    deployment_routes,
    history_routes,
    key_routes,
    metrics_routes,
    models_api,
    openapi_routes,
    platform_routes,
    queue,
    realtime,
    run,
    secret_routes,
    storage_routes,
    tokens,
    webhook_routes,
    worker_routes,
)
from openfal.gateway.auth import Access, Handler, guard
from openfal.gateway.client_proxy import ClientProxy
from openfal.gateway.hosts import HostRouting
from openfal.gateway.http import HTTPError, json_response
from openfal.server import Platform
from openfal.web import playground

log = logging.getLogger(__name__)

_BY_ID = "/queue/{owner}/{app}/requests/{request_id}"
# The same URLs with the endpoint's sub-path, as the pages show them (the URLs openfal hands
# out leave it out, as the official clients expect).
_BY_ID_SUB_PATH = "/queue/{owner}/{app}/{sub_path:path}/requests/{request_id}"
_SIGNED_UPLOAD = "/storage/uploads/{upload_id}"
_CDN_MULTIPART = "/files/{file_id}/{file_name}/multipart/{upload_id}"

P, C, K, A = Access.PUBLIC, Access.CALLER, Access.KEY, Access.ADMIN


# (path, method) -> who may call it; tests walk it to check every route's guard.
ACCESS: dict[tuple[str, str], Access] = {}


def route(path: str, handler: Handler, methods: list[str], access: Access) -> Route:
    for method in methods:
        ACCESS[(path, method)] = access
    return Route(path, guard(handler, access), methods=methods)


# Every route names who may call it (gateway/auth.py); handlers of CALLER routes check
# what an anonymous caller may do (public apps, requests made anonymously).
ROUTES = [
    route("/health", platform_routes.health, ["GET"], P),
    *(route(path, handler, ["GET"], P) for path, handler in playground.ROUTES),
    route("/.well-known/jwks.json", webhook_routes.jwks, ["GET"], P),
    route("/openapi.json", openapi_routes.ServerDocument(ACCESS), ["GET"], K),
    route("/api/apps", platform_routes.apps, ["GET"], K),
    route("/v1/models", models_api.list_models, ["GET"], K),
    route("/v1/models/requests", history_routes.list_requests, ["GET"], K),
    route("/v1/models/requests/by-endpoint", history_routes.list_by_endpoint, ["GET"], K),
    route("/v1/models/requests/{request_id}/payloads", history_routes.delete_payloads,
          ["DELETE"], K),
    # ADMIN unless the server runs with --public-metrics: the handler checks the key itself.
    route("/metrics", metrics_routes.metrics, ["GET"], P),
    route("/api/runners", platform_routes.runners, ["GET"], A),
    route("/api/keys", key_routes.list_keys, ["GET"], A),
    route("/api/keys", key_routes.create_key, ["POST"], A),
    route("/api/keys/{key_id}", key_routes.update_key, ["PATCH"], A),
    route("/api/keys/{key_id}", key_routes.revoke_key, ["DELETE"], A),
    route("/api/usage", key_routes.usage, ["GET"], A),
    route("/api/webhooks/rotate-key", webhook_routes.rotate_key, ["POST"], A),
    route("/api/deployments", deployment_routes.deploy, ["POST"], A),
    route("/api/deployments", deployment_routes.list_deployments, ["GET"], A),
    route("/api/deployments/{owner}/{name}", deployment_routes.revisions, ["GET"], A),
    route("/api/deployments/{owner}/{name}", deployment_routes.delete, ["DELETE"], A),
    route("/api/deployments/{owner}/{name}/rollback", deployment_routes.rollback, ["POST"], A),
    route("/api/secrets", secret_routes.list_secrets, ["GET"], A),
    route("/api/secrets/{name}", secret_routes.set_secret, ["PUT"], A),
    route("/api/secrets/{name}", secret_routes.delete_secret, ["DELETE"], A),
    *(route(path, handler, ["POST"], A) for path, handler in worker_routes.ROUTES),
    # Re-enters the app with the target URL: the target route's own access applies.
    Route("/api/fal/proxy", ClientProxy(), methods=["GET", "POST", "PUT", "OPTIONS"]),
    route("/api/requests/{request_id}/attempts", platform_routes.attempts, ["GET"], C),
    route("/api/requests/{request_id}/webhooks", webhook_routes.show, ["GET"], C),
    route("/api/requests/{request_id}/webhooks/redeliver", webhook_routes.redeliver,
          ["POST"], C),
    route("/api/openapi/queue/openapi.json", platform_routes.openapi, ["GET"], C),
    route(_BY_ID + "/status", queue.status, ["GET"], C),
    route(_BY_ID + "/status/stream", queue.status_stream, ["GET"], C),
    route(_BY_ID + "/cancel", queue.cancel, ["PUT"], C),
    route(_BY_ID, queue.result, ["GET"], C),
    route(_BY_ID_SUB_PATH + "/status", queue.status, ["GET"], C),
    route(_BY_ID_SUB_PATH + "/status/stream", queue.status_stream, ["GET"], C),
    route(_BY_ID_SUB_PATH + "/cancel", queue.cancel, ["PUT"], C),
    route(_BY_ID_SUB_PATH, queue.result, ["GET"], C),
    route("/storage/auth/token", storage_routes.cdn_token, ["POST"], K),
    route("/storage/upload/initiate", storage_routes.initiate, ["POST"], K),
    route("/storage/upload/initiate-multipart", storage_routes.initiate, ["POST"], K),
    # Signed upload URLs and CDN bearer tokens carry their own proof.
    route(_SIGNED_UPLOAD, storage_routes.put_signed_upload, ["PUT"], P),
    route(_SIGNED_UPLOAD + "/complete", storage_routes.complete_signed, ["POST"], P),
    route(_SIGNED_UPLOAD + "/{part_number:int}", storage_routes.put_signed_part, ["PUT"], P),
    route("/files/upload", storage_routes.upload, ["POST"], P),
    route("/files/upload/multipart", storage_routes.create_multipart, ["POST"], P),
    route(_CDN_MULTIPART + "/complete", storage_routes.complete_cdn, ["POST"], P),
    route(_CDN_MULTIPART + "/{part_number:int}", storage_routes.put_cdn_part, ["PUT"], P),
    route("/files/{file_path:path}", storage_routes.serve_file, ["GET"], P),
    route("/storage/{rest:path}", storage_routes.preflight, ["OPTIONS"], P),
    route("/files/{rest:path}", storage_routes.preflight, ["OPTIONS"], P),
    route("/queue/{endpoint_id:path}", queue.submit, ["POST"], C),
    route("/tokens/", tokens.mint, ["POST"], K),
    route("/tokens", tokens.mint, ["POST"], K),
    route("/{endpoint_id:path}/stream", run.stream, ["POST"], C),
    route("/{endpoint_id:path}", run.run, ["POST", "GET"], C),
    # Checks a realtime token or a key itself (gateway/realtime.py).
    WebSocketRoute("/{endpoint_id:path}", realtime.session),
]


class SegmentRouter(Router):
    """Starlette's router, asking each request only the routes that can match its path:
    those whose first segment is the path's (``/queue/...``, ``/files/...``) and those that
    start with a parameter (the endpoints), in the table's order. The same answers as
    trying every route (404, 405 and slash redirects included), without matching every
    route's pattern against every path."""

    def __init__(self, routes: list[BaseRoute], **kwargs) -> None:
        super().__init__(routes, **kwargs)
        segments = {_first_segment(route) for route in routes} - {None}
        self._by_segment = {segment: Router([r for r in routes
                                             if _first_segment(r) in (segment, None)])
                            for segment in segments}
        self._other = Router([r for r in routes if _first_segment(r) is None])

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().app(scope, receive, send)
            return
        scope.setdefault("router", self)
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        segment = path[1:].split("/", 1)[0]
        await self._by_segment.get(segment, self._other).app(scope, receive, send)


def _first_segment(route: BaseRoute) -> str | None:
    """The literal first segment of a route's path; None when it starts with a parameter."""
    path: str = getattr(route, "path", "")
    segment = path[1:].split("/", 1)[0]
    return None if "{" in segment else segment


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return exc.response()


async def _shutting_down(request: Request, exc: Exception) -> Response:
    """Work refused while the server drains (submits, direct runs): a retryable 503."""
    outcome = shutting_down()
    return Response(outcome.body, outcome.status, outcome.headers,
                    media_type="application/json")


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"detail": exc.detail}, exc.status_code, exc.headers)


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    log.info("%s %s: the client disconnected before sending the whole body",
             request.method, request.url.path)
    return Response(status_code=499)  # never sent: there is nobody to send it to


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
        middleware=[Middleware(HostRouting)],
        lifespan=lifespan,
        exception_handlers={HTTPError: _http_error, ShuttingDown: _shutting_down,
                            HTTPException: _starlette_error,
                            ClientDisconnect: _client_disconnected,
                            Exception: _unexpected_error},
    )
    app.router = SegmentRouter(ROUTES, lifespan=lifespan)
    app.state.platform = platform
    return app
