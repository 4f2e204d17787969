"""Routes about the platform itself: health, served apps, schemas, runners."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from openfal import __version__
from openfal.app.schema import endpoint_openapi
from openfal.gateway.auth import ensure_visible, principal
from openfal.gateway.hosts import queue_prefix
from openfal.gateway.http import HTTPError, json_response
from openfal.gateway.intake import callable_endpoint
from openfal.gateway.urls import base_url, schema_url
from openfal.server import Platform


async def health(request: Request) -> Response:
    return json_response({"status": "ok", "version": __version__})


async def apps(request: Request) -> Response:
    """The served endpoints; ``app_ref`` (a file path on this server) only for ADMIN keys."""
    platform: Platform = request.app.state.platform
    caller = principal(request)
    show_refs = caller is not None and caller.is_admin
    listing = []
    for app in platform.registry.apps.values():
        for path, spec in app.cls.endpoints().items():
            endpoint_id = app.endpoint_id(path)
            listing.append({
                "endpoint_id": endpoint_id, "app_id": app.app_id, "path": path,
                **({"app_ref": app.ref} if show_refs else {}), "is_async": spec.is_async,
                "openapi_url": schema_url(request, endpoint_id),
                "config": {key: getattr(app.cls, key) for key in (
                    "machine_type", "keep_alive", "min_concurrency", "max_concurrency",
                    "max_multiplexing", "request_timeout", "startup_timeout")},
            })
    return json_response({"endpoints": listing})


async def openapi(request: Request) -> Response:
    endpoint_id = request.query_params.get("endpoint_id")
    if not endpoint_id:
        raise HTTPError(422, [{"loc": ["query", "endpoint_id"], "msg": "Field required",
                               "type": "missing"}])
    app, spec = callable_endpoint(request, endpoint_id)
    document = endpoint_openapi(endpoint_id, app.app_id, spec,
                                base_url(request) + queue_prefix(request.scope))
    return json_response(document)


async def runners(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    worker = platform.worker
    return json_response({
        "runners": worker.describe_runners() if worker is not None else [],
        "templates": worker.templates.describe() if worker is not None else [],
        "waiting_direct_by_key": dict(platform.dispatcher.waiting_direct_by_key)})


async def attempts(request: Request) -> Response:
    """Every attempt of a request, each with its own id: retries stay traceable."""
    platform: Platform = request.app.state.platform
    request_id = request.path_params["request_id"]
    record = await platform.store.get_request(request_id)
    if record is None:
        raise HTTPError(404, "Request not found", "request_not_found")
    ensure_visible(request, record.key_id)
    return json_response({"attempts": await platform.store.get_attempts(request_id)})
