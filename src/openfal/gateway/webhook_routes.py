"""Webhooks on the wire: ``fal_webhook`` at submit, the JWKS, the delivery log, redelivery."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from openfal.gateway.auth import ensure_visible
from openfal.gateway.http import HTTPError, field_error, json_response, read_model
from openfal.server import Platform
from openfal.store.base import RequestRecord
from openfal.webhooks.signing import DEFAULT_RETIRE_AFTER_SECONDS
from openfal.webhooks.targets import URL_OPTION, InvalidTarget, check_target

JWKS_MAX_AGE_SECONDS = 300
MAX_ROTATION_BODY = 4096


async def webhook_options(request: Request) -> dict[str, Any]:
    """The job options for the submit's ``fal_webhook`` URL (none without one); a URL that
    can never be delivered to is a 422 now, not a silent failure later."""
    url = request.query_params.get("fal_webhook")
    if url is None:
        return {}
    platform: Platform = request.app.state.platform
    try:
        # Resolves the host name: off the event loop.
        await asyncio.to_thread(check_target, url, platform.settings.network_policy)
    except InvalidTarget as exc:
        raise field_error(["query", "fal_webhook"], str(exc)) from None
    return {URL_OPTION: url}


async def jwks(request: Request) -> Response:
    """The public keys webhook signatures verify with (current and recently rotated)."""
    platform: Platform = request.app.state.platform
    return json_response(await platform.webhooks.keys.jwks(time.time()), headers={
        "cache-control": f"public, max-age={JWKS_MAX_AGE_SECONDS}"})


class Rotation(BaseModel):
    retire_after_hours: float = Field(default=DEFAULT_RETIRE_AFTER_SECONDS / 3600, ge=0,
                                      le=24 * 365)


async def rotate_key(request: Request) -> Response:
    """A new current signing key for every gateway of the store; the JWKS keeps publishing
    the previous ones for ``retire_after_hours``."""
    platform: Platform = request.app.state.platform
    asked = await read_model(request, Rotation, MAX_ROTATION_BODY)
    key = await platform.webhooks.keys.rotate(asked.retire_after_hours * 3600)
    return json_response({"kid": key.kid, **await platform.webhooks.keys.jwks(time.time())},
                         201)


async def show(request: Request) -> Response:
    """A request's webhook: its target, state, every attempt and the next one's time."""
    platform: Platform = request.app.state.platform
    record = await _visible_request(request)
    return json_response(await _webhook_view(platform, record))


async def redeliver(request: Request) -> Response:
    """Deliver a finished request's webhook again now (another full set of tries)."""
    platform: Platform = request.app.state.platform
    record = await _visible_request(request)
    if await platform.store.get_webhook(record.id) is None:
        raise HTTPError(409, "The request has not finished; its webhook is not sent yet",
                        "request_in_progress")
    if not await platform.webhooks.redeliver(record.id):
        raise HTTPError(409, "A delivery attempt is under way; try again when it ends",
                        "webhook_in_flight")
    return json_response(await _webhook_view(platform, record), 202)


async def _visible_request(request: Request) -> RequestRecord:
    """The request named in the path, if it has a webhook this caller may see; else 404."""
    platform: Platform = request.app.state.platform
    record = await platform.store.get_request(request.path_params["request_id"])
    if record is None:
        raise HTTPError(404, "Request not found", "request_not_found")
    ensure_visible(request, record.key_id)
    if URL_OPTION not in record.options:
        raise HTTPError(404, "The request was submitted without a webhook",
                        "webhook_not_found")
    return record


async def _webhook_view(platform: Platform, record: RequestRecord) -> dict[str, Any]:
    webhook = await platform.store.get_webhook(record.id)
    if webhook is None:
        # Not finished yet: the webhook is queued when the request completes.
        return {"request_id": record.id, "url": record.options[URL_OPTION],
                "state": "pending", "gateway_request_id": None, "attempts": [],
                "next_attempt_at": None, "delivered_at": None}
    attempts = await platform.store.get_webhook_attempts(record.id)
    # A webhook whose attempt is under way is still waiting for its 2xx: pending.
    state = "pending" if webhook.state == "delivering" else webhook.state
    return {"request_id": record.id, "url": webhook.url, "state": state,
            "gateway_request_id": webhook.gateway_request_id,
            "attempts": [asdict(attempt) for attempt in attempts],
            "next_attempt_at": webhook.next_attempt_at, "delivered_at": webhook.delivered_at}
