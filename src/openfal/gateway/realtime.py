"""Realtime sessions: a websocket per client on a ``@openfal.realtime`` endpoint.

Frames follow the official clients: inputs and outputs are msgpack binary frames (JSON
text frames are accepted as input too); errors and control messages are JSON text frames
``{"type": "x-fal-error", "error": ..., "reason": ...}``. Each input runs as one direct
request on the app's runners, so placement, multiplexing and scaling are the same as HTTP.
A session that sends nothing for the endpoint's ``session_timeout`` is told ``TIMEOUT`` and
closed with a normal close (1000).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from openfal.app.errors import validation_detail
from openfal.app.registry import ServedApp
from openfal.auth import tokens
from openfal.auth.keys import Principal
from openfal.dispatcher.jobs import Job, Priority
from openfal.gateway.auth import identify
from openfal.gateway.http import HTTPError
from openfal.gateway.intake import forwarded_headers
from openfal.gateway.run import next_partial
from openfal.server import Platform
from openfal.store.base import Mode

NORMAL_CLOSE = 1000
POLICY_VIOLATION = 1008


async def session(websocket: WebSocket) -> None:
    platform: Platform = websocket.app.state.platform
    found = platform.registry.resolve(websocket.path_params["endpoint_id"])
    if found is None or found[1].realtime is None:
        await websocket.close(code=POLICY_VIOLATION, reason="not a realtime endpoint")
        return
    app, spec = found
    await websocket.accept()
    if not await _authorized(websocket, platform, app):
        return
    caller = identify(websocket)
    assert spec.realtime is not None and spec.input_model is not None
    timeout = spec.realtime.session_timeout
    try:
        while True:
            try:
                message = await asyncio.wait_for(websocket.receive(), timeout)
            except TimeoutError:
                await _send_error(websocket, "TIMEOUT", "no inputs, reconnect when needed!")
                await websocket.close(code=NORMAL_CLOSE)
                return
            if message["type"] == "websocket.disconnect":
                return
            await _answer(websocket, platform, app, spec, message, caller)
    except WebSocketDisconnect:
        return


async def _authorized(websocket: WebSocket, platform: Platform, app: ServedApp) -> bool:
    """A realtime token (``fal_jwt_token``) for this app, or an API key, unless the app is
    public; otherwise the session ends with an Unauthorized frame."""
    token = websocket.query_params.get("fal_jwt_token")
    try:
        if token is not None:
            tokens.verify(platform.signer, token, app.cls.app_name)
        elif identify(websocket) is None and app.cls.app_auth != "public":
            raise tokens.TokenError("a realtime token or an API key is needed")
    except (tokens.TokenError, HTTPError) as exc:
        # Both clients' shapes: the JS client drops the token on {status, error}; the
        # Python client raises on x-fal-error.
        reason = exc.detail if isinstance(exc, HTTPError) else str(exc)
        await websocket.send_text(json.dumps({
            "type": "x-fal-error", "status": "error", "error": "Unauthorized",
            "reason": reason}))
        await websocket.close(code=POLICY_VIOLATION)
        return False
    return True


def _decode(message: dict[str, Any]) -> Any:
    if message.get("bytes") is not None:
        return msgpack.unpackb(message["bytes"], raw=False)
    return json.loads(message.get("text") or "")


async def _answer(websocket: WebSocket, platform: Platform, app: ServedApp, spec: Any,
                  message: dict[str, Any], caller: Principal | None) -> None:
    try:
        value = _decode(message)
        spec.input_model.model_validate(value)
    except ValidationError as exc:
        await _send_error(websocket, "VALIDATION_ERROR", json.dumps(validation_detail(exc)))
        return
    except ValueError as exc:
        await _send_error(websocket, "INVALID_MESSAGE", f"not msgpack or JSON: {exc}")
        return
    key_id = caller.key_id if caller is not None else None
    limit = caller.max_concurrency if caller is not None else None
    if limit is not None and platform.dispatcher.running_for(key_id) >= limit:
        await _send_error(websocket, "CONCURRENCY_LIMIT",
                          f"this key already has {limit} requests running")
        return
    job = platform.dispatcher.new_job(
        app, spec.path, msgpack.packb(value, use_bin_type=True),
        forwarded_headers(websocket), Mode.DIRECT, Priority.DIRECT,
        {} if limit is None else {"key_limit": limit}, key_id)
    job.encoding = "msgpack"
    job.recorded = False
    job.partials = asyncio.Queue()
    await _run(websocket, platform, job)


async def _run(websocket: WebSocket, platform: Platform, job: Job) -> None:
    assert job.partials is not None
    running = asyncio.ensure_future(platform.dispatcher.run_direct(job))
    try:
        while (partial := await next_partial(job.partials, running)) is not None:
            await websocket.send_bytes(partial)
        outcome = running.result()
    finally:
        if not running.done():
            platform.dispatcher.cancel(job.id)
    if outcome.ok:
        await websocket.send_bytes(outcome.body)
    else:
        await _send_error(websocket, (outcome.error_type or "INTERNAL_ERROR").upper(),
                          outcome.error or "request failed")


async def _send_error(websocket: WebSocket, error: str, reason: str) -> None:
    await websocket.send_text(json.dumps({"type": "x-fal-error", "error": error,
                                          "reason": reason}))
