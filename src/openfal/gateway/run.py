"""The run API: ``POST /{endpoint_id}`` runs a request now and answers with its result;
``POST /{endpoint_id}/stream`` answers server-sent events, one per partial result, the last
one being the final result."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from openfal.dispatcher.jobs import Job, Priority
from openfal.gateway.http import HTTPError
from openfal.gateway.intake import (
    callable_endpoint,
    forwarded_headers,
    job_options,
    key_options,
    validated_payload,
)
from openfal.server import Platform
from openfal.store.base import Mode, Outcome


async def _direct_job(request: Request) -> tuple[Platform, Job]:
    platform: Platform = request.app.state.platform
    app, spec = callable_endpoint(request, request.path_params["endpoint_id"])
    _, options = job_options(request)
    key_id, key_limits = key_options(request)
    limit = key_limits.get("key_limit")
    if limit is not None and platform.dispatcher.running_for(key_id) >= limit:
        # Direct runs do not wait for a key's slot; the clients retry a 429.
        raise HTTPError(429, f"This key already has {limit} requests running",
                        "concurrency_limit", {"retry-after": "1"})
    payload = await validated_payload(request, platform, spec)
    job = platform.dispatcher.new_job(app, spec.path, payload, forwarded_headers(request),
                                      Mode.DIRECT, Priority.DIRECT, {**options, **key_limits},
                                      key_id)
    return platform, job


def _outcome_response(job: Job, outcome: Outcome) -> Response:
    headers = {"x-fal-request-id": job.id, **outcome.headers}
    return Response(outcome.body, outcome.status, headers, media_type="application/json")


async def run(request: Request) -> Response:
    platform, job = await _direct_job(request)
    return _outcome_response(job, await platform.dispatcher.run_direct(job))


async def stream(request: Request) -> Response:
    platform, job = await _direct_job(request)
    job.partials = asyncio.Queue()
    running = asyncio.ensure_future(platform.dispatcher.run_direct(job))
    first = await next_partial(job.partials, running)
    if first is None and not running.result().ok:
        # Nothing was streamed yet: fail as a plain HTTP error the clients understand.
        return _outcome_response(job, running.result())

    async def events() -> AsyncIterator[bytes]:
        item = first
        try:
            while item is not None:
                yield _event(item)
                item = await next_partial(job.partials, running)
            outcome = running.result()
            if outcome.ok:
                yield _event(outcome.body)
            else:
                error = {"status": outcome.status, "detail": outcome.error,
                         "error_type": outcome.error_type}
                yield b"event: error\n" + _event(json.dumps(error).encode())
        finally:
            if not running.done():
                platform.dispatcher.cancel(job.id)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"x-fal-request-id": job.id, "cache-control": "no-store"})


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
