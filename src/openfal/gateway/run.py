"""The run API: ``POST /{endpoint_id}`` runs a request now and answers with its result."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from openfal.dispatcher.jobs import Priority
from openfal.gateway.intake import (
    forwarded_headers,
    job_options,
    resolve_endpoint,
    validated_payload,
)
from openfal.server import Platform
from openfal.store.base import Mode


async def run(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    app, spec = resolve_endpoint(platform, request.path_params["endpoint_id"])
    _, options = job_options(request)
    payload = await validated_payload(request, platform, spec)
    job = platform.dispatcher.new_job(app, spec.path, payload, forwarded_headers(request),
                                      Mode.DIRECT, Priority.DIRECT, options)
    outcome = await platform.dispatcher.run_direct(job)
    headers = {"x-fal-request-id": job.id, **outcome.headers}
    return Response(outcome.body, outcome.status, headers, media_type="application/json")
