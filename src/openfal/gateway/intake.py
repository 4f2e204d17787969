"""Turning an incoming HTTP request into a job: endpoint lookup, validation, options."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request

from openfal.app.app import EndpointSpec
from openfal.app.errors import validation_detail
from openfal.app.registry import ServedApp
from openfal.dispatcher.jobs import Priority
from openfal.files.lifecycle import InvalidLifecycle, requested_lifecycle
from openfal.gateway.auth import principal, require_key_for_app
from openfal.gateway.http import HTTPError, field_error, read_body
from openfal.store.base import Mode
from openfal.upstream.placement import NOT_CONFIGURED, is_routed_only, not_configured

if TYPE_CHECKING:
    from openfal.server import Platform

_TRUE = {"1", "true", "yes"}
_PRIORITIES = {"normal": Priority.NORMAL, "low": Priority.LOW}
# Request headers an app may see: the platform's own and the app pass-throughs.
_FORWARDED_PREFIXES = ("x-fal-", "x-app-fal-")


def resolve_endpoint(platform: Platform, endpoint_id: str) -> tuple[ServedApp, EndpointSpec]:
    found = platform.registry.resolve(endpoint_id)
    if found is None:
        raise HTTPError(404, f"Endpoint {endpoint_id!r} not found", "endpoint_not_found")
    return found


def callable_endpoint(request: Request, endpoint_id: str) -> tuple[ServedApp, EndpointSpec]:
    """The endpoint, if this caller may call it (a key, unless the app is public)."""
    platform: Platform = request.app.state.platform
    app, spec = resolve_endpoint(platform, endpoint_id)
    require_key_for_app(request, app.cls.app_auth == "public")
    return app, spec


def ensure_runnable(platform: Platform, app: ServedApp, spec: EndpointSpec) -> None:
    """A routed-only endpoint with no upstream configured is refused once its input has
    been validated, before any request exists."""
    if not is_routed_only(app.cls):
        return
    endpoint_id = app.endpoint_id(spec.path)
    if platform.settings.upstreams.for_endpoint(endpoint_id) is None:
        raise HTTPError(503, not_configured(endpoint_id), NOT_CONFIGURED)


def key_options(request: Request) -> tuple[str | None, dict[str, Any]]:
    """Who is calling, and the concurrency limit its requests carry."""
    caller = principal(request)
    if caller is None or caller.key_id is None:
        return None, {}
    options = {} if caller.max_concurrency is None else {"key_limit": caller.max_concurrency}
    return caller.key_id, options


async def validated_payload(request: Request, platform: Platform, spec: EndpointSpec) -> bytes:
    """The body, checked against the endpoint's input model; 422/413 otherwise."""
    if request.method == "GET":
        # GET runs carry their input in the query string.
        body = json.dumps(dict(request.query_params)).encode()
    else:
        body = await read_body(request, platform.settings.max_body_bytes)
    if not body.strip():
        body = b"{}"
    if spec.input_model is not None:
        try:
            spec.input_model.model_validate_json(body)
        except ValidationError as exc:
            raise HTTPError(422, validation_detail(exc)) from None
    return body


def job_options(request: Request, mode: Mode) -> tuple[Priority, dict[str, Any]]:
    headers = request.headers
    options: dict[str, Any] = _io_options(headers.get("x-fal-store-io"), mode)
    timeout = headers.get("x-fal-request-timeout")
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise field_error(["header", "x-fal-request-timeout"],
                              "must be a positive number of seconds")
        options["start_deadline"] = time.time() + seconds
    priority_name = headers.get("x-fal-queue-priority", "normal").lower()
    if priority_name not in _PRIORITIES:
        raise field_error(["header", "x-fal-queue-priority"], "must be 'normal' or 'low'")
    if headers.get("x-fal-no-retry", "").lower() in _TRUE:
        options["no_retry"] = True
    hint = headers.get("x-fal-runner-hint")
    if hint:
        options["runner_hint"] = hint
    try:
        # Checked here, before the request exists; the runner reads the header as sent.
        requested_lifecycle(headers)
    except InvalidLifecycle as exc:
        raise HTTPError(422, exc.detail) from None
    return _PRIORITIES[priority_name], options


def _io_options(store_io: str | None, mode: Mode) -> dict[str, Any]:
    """``X-Fal-Store-IO: 0`` keeps the request's input and result out of its history: a
    direct run's are dropped when it ends (``transient_io``, as realtime frames are), a
    queued one's once its result has been delivered, so that it can be fetched once
    (``store_io``: see ``RequestRecord.io_dropped_once_delivered``)."""
    if store_io is None or store_io == "1":
        return {}
    if store_io != "0":
        raise field_error(["header", "x-fal-store-io"], "must be 0 or 1")
    return {"store_io": False} if mode is Mode.QUEUE else {"transient_io": True}


def may_name(request: Request, parameter: bytes) -> bool:
    """Whether the query string may hold ``parameter``: most requests' query strings can be
    ruled out without parsing them (percent-escapes must be decoded first, so they count)."""
    query = request.scope["query_string"]
    return parameter in query or b"%" in query


def forwarded_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.startswith(_FORWARDED_PREFIXES)}


_LONGEST_QUEUE = 10**9


def max_queue_length(request: Request) -> int | None:
    if not may_name(request, b"fal_max_queue_length"):
        return None  # most submits: no query string to parse
    raw = request.query_params.get("fal_max_queue_length")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):  # isdigit alone lets "²" through to int()
        raise field_error(["query", "fal_max_queue_length"], "must be a non-negative integer")
    return min(int(raw), _LONGEST_QUEUE)  # past any real queue: no bound
