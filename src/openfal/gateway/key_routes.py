"""Admin routes: API keys and the usage ledger."""

from __future__ import annotations

import math
import time
from dataclasses import asdict

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from openfal.auth.keys import Scope
from openfal.gateway.http import HTTPError, field_error, json_response, read_model
from openfal.server import Platform
from openfal.store.base import KeyRecord

MAX_BODY = 64 * 1024


class NewKey(BaseModel):
    scope: Scope = Scope.API
    name: str = Field(default="", max_length=200)
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)


class KeyUpdate(BaseModel):
    max_concurrency: int | None = Field(ge=1, le=100_000)


def _public(key: KeyRecord) -> dict:
    described = asdict(key)
    del described["secret_hash"]
    return described


async def list_keys(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    if platform.store.shared:  # with the keys other gateways made or revoked just now
        await platform.keyring.load()
    return json_response({"keys": [_public(key) for key in platform.keyring.all()]})


async def create_key(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    asked = await read_model(request, NewKey, MAX_BODY)
    record, secret = await platform.keyring.create(asked.scope, asked.name,
                                                   asked.max_concurrency)
    return json_response({**_public(record), "key": secret}, 201)


async def update_key(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    asked = await read_model(request, KeyUpdate, MAX_BODY)
    assert isinstance(asked, KeyUpdate)
    if not await platform.keyring.set_concurrency(request.path_params["key_id"],
                                                  asked.max_concurrency):
        raise HTTPError(404, "Key not found", "key_not_found")
    return json_response({"status": "updated"})


async def revoke_key(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    if not await platform.keyring.revoke(request.path_params["key_id"]):
        raise HTTPError(404, "Key not found (or already revoked)", "key_not_found")
    return json_response({"status": "revoked"})


def _time_param(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):  # NaN and infinities have no JSON form to answer with
        raise field_error(["query", name], "must be a Unix time in seconds")
    return seconds


async def usage(request: Request) -> Response:
    """Finished requests by key and endpoint over ``[since, until)`` (Unix seconds)."""
    platform: Platform = request.app.state.platform
    now = time.time()
    since = _time_param(request, "since", now - 30 * 24 * 3600)
    until = _time_param(request, "until", now + 1)
    rows = await platform.store.usage(since, until)
    return json_response({"since": since, "until": until,
                          "usage": [asdict(row) for row in rows]})
