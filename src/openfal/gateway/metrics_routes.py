"""``GET /metrics``: the server's metrics in Prometheus' text format (openfal.metrics,
docs/metrics.md), for ADMIN keys unless the server runs with ``--public-metrics``."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from openfal.gateway.auth import Access, guard
from openfal.server import Platform


async def _exposition(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    return Response(await platform.metrics.scrape(platform), media_type=CONTENT_TYPE_LATEST)


_for_admins = guard(_exposition, Access.ADMIN)


async def metrics(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    if platform.settings.public_metrics:
        return await _exposition(request)
    return await _for_admins(request)
