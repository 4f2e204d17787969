"""Admin routes: app secrets (``openfal secrets``). A value goes in, is sealed, and never
comes back out: the routes answer names and times, and workers get the sealed values through
the work API (openfal/secrets.py)."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from openfal.gateway.http import HTTPError, field_error, json_response, read_model
from openfal.secrets import (
    MAX_VALUE_CHARS,
    NAME_RULE,
    STORE_PREFIX,
    VALUE_PATTERN,
    is_valid_name,
    updated_at,
)
from openfal.server import Platform

MAX_BODY = 16 * MAX_VALUE_CHARS  # room for the largest value, JSON-escaped


class SecretValue(BaseModel):
    value: str = Field(max_length=MAX_VALUE_CHARS, pattern=VALUE_PATTERN)


def _platform(request: Request) -> Platform:
    return request.app.state.platform


def _name(request: Request) -> str:
    name = request.path_params["name"]
    if not is_valid_name(name):
        raise field_error(["path", "name"], NAME_RULE)
    return name


async def _value(request: Request) -> str:
    try:
        return (await read_model(request, SecretValue, MAX_BODY)).value
    except HTTPError as exc:
        if isinstance(exc.detail, list):  # a malformed body's errors would echo the value
            exc.detail = [{k: v for k, v in item.items() if k != "input"}
                          for item in exc.detail]
        raise


async def list_secrets(request: Request) -> Response:
    stored = await _platform(request).store.list_secrets(STORE_PREFIX)
    return json_response({"secrets": [
        {"name": name.removeprefix(STORE_PREFIX), "updated_at": updated_at(sealed)}
        for name, sealed in stored]})


async def set_secret(request: Request) -> Response:
    platform = _platform(request)
    name = _name(request)
    value = await _value(request)
    now = time.time()
    await platform.store.set_secret(STORE_PREFIX + name,
                                    platform.secret_box.seal(name, value, now))
    return json_response({"name": name, "updated_at": now})


async def delete_secret(request: Request) -> Response:
    name = _name(request)
    if not await _platform(request).store.delete_secret(STORE_PREFIX + name):
        raise HTTPError(404, f"No secret named {name}", "secret_not_found")
    return json_response({"name": name, "status": "deleted"})
