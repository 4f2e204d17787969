"""``POST /tokens/``: mint a realtime token, as the official clients ask for one."""

from __future__ import annotations

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from openfal.auth import tokens
from openfal.gateway.auth import principal
from openfal.gateway.http import json_response, read_model
from openfal.server import Platform

MAX_TOKEN_REQUEST_BYTES = 64 * 1024


class TokenRequest(BaseModel):
    allowed_apps: list[str] = Field(min_length=1, description="App aliases, e.g. ['flux'].")
    token_expiration: int = Field(default=120, ge=1, le=tokens.MAX_TTL_SECONDS)


async def mint(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    asked = await read_model(request, TokenRequest, MAX_TOKEN_REQUEST_BYTES)
    caller = principal(request)
    token = tokens.mint(platform.signer, asked.allowed_apps, asked.token_expiration,
                        caller.key_id if caller is not None else None)
    return json_response(token, 201)
