"""The run API: ``POST /{endpoint_id}`` runs a request now and answers with its result;
``POST /{endpoint_id}/stream`` answers server-sent events, one per partial result, the last
one being the final result.

A direct request lives only as long as its caller: when the client goes away before the
answer, the request is cancelled (queued ones are not tied to a connection)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from openfal.dispatcher.dispatcher import KeyAtLimit
from openfal.dispatcher.jobs import Job, Priority
from openfal.gateway.http import EventStream, HTTPError, until_disconnected
from openfal.gateway.intake import (
    callable_endpoint,
    ensure_runnable,
    forwarded_headers,
    job_options,
    key_options,
    validated_payload,
)
from openfal.server import Platform
from openfal.store.base import Mode, Outcome

log = logging.getLogger(__name__)


async def _direct_job(request: Request, streaming: bool = False) -> tuple[Platform, Job]:
    platform: Platform = request.app.state.platform
    endpoint_id = request.path_params["endpoint_id"]
    if streaming and platform.registry.resolve(endpoint_id + "/stream") is not None:
        # ``POST /x/stream`` calls the endpoint ``x/stream`` where there is one (an app's
        # own ``/stream``, as on the hosted platform), else streams endpoint ``x``.
        endpoint_id += "/stream"
    app, spec = callable_endpoint(request, endpoint_id)
    _, options = job_options(request, Mode.DIRECT)
    key_id, key_limits = key_options(request)
    payload = await validated_payload(request, platform, spec)
    ensure_runnable(platform, app, spec)
    job = platform.dispatcher.new_job(app, spec.path, payload, forwarded_headers(request),
                                      Mode.DIRECT, Priority.DIRECT, {**options, **key_limits},
                                      key_id)
    return platform, job


def _outcome_response(job: Job, outcome: Outcome) -> Response:
    headers = {"x-fal-request-id": job.id, **outcome.headers}
    return Response(outcome.body, outcome.status, headers, media_type="application/json")


async def _run_direct(platform: Platform, job: Job) -> asyncio.Future[Outcome]:
    """Start the job; a key at its bound is a 429 (``ShuttingDown`` is the app's 503)."""
    try:
        return await platform.dispatcher.start_direct(job)
    except KeyAtLimit as exc:
        raise HTTPError(429, str(exc), "concurrency_limit", {"retry-after": "1"}) from None


async def run(request: Request) -> Response:
    platform, job = await _direct_job(request)
    running = await _run_direct(platform, job)
    if await until_disconnected(request.receive, running):
        return _abandoned(platform, job)
    return _outcome_response(job, running.result())


def _abandoned(platform: Platform, job: Job) -> Response:
    platform.dispatcher.abandon(job.id)
    log.info("request %s: the client went away; cancelled", job.id)
    return Response(status_code=499)  # never sent: there is nobody to send it to


async def stream(request: Request) -> Response:
    platform, job = await _direct_job(request, streaming=True)
    partials = job.stream_partials()
    running = await _run_direct(platform, job)
    first_partial = asyncio.ensure_future(next_partial(partials, running))
    if await until_disconnected(request.receive, first_partial):
        first_partial.cancel()
        return _abandoned(platform, job)
    first = first_partial.result()
    if first is None and not running.result().ok:
        # Nothing was streamed yet: fail as a plain HTTP error the clients understand.
        return _outcome_response(job, running.result())

    async def events() -> AsyncIterator[bytes]:
        item = first
        try:
            while item is not None:
                yield _event(item)
                item = await next_partial(partials, running)
            outcome = running.result()
            if outcome.ok:
                yield _event(outcome.body)
            else:
                error = {"status": outcome.status, "detail": outcome.error,
                         "error_type": outcome.error_type}
                yield b"event: error\n" + _event(json.dumps(error).encode())
        finally:
            if not running.done():
                platform.dispatcher.abandon(job.id)

    return EventStream(events(), {"x-fal-request-id": job.id, "cache-control": "no-store"})


def _event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


async def next_partial(partials: asyncio.Queue[bytes],
                        running: asyncio.Future[Outcome]) -> bytes | None:
    """The next partial result, or None once the request has ended and all were taken."""
    if not partials.empty():
        return partials.get_nowait()
    if running.done():
        return None
    getter = asyncio.ensure_future(partials.get())
    done, _ = await asyncio.wait({getter, running}, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    return partials.get_nowait() if not partials.empty() else None
