"""Realtime sessions: a websocket per client on a ``@openfal.realtime`` endpoint.

Frames follow the official clients: inputs and outputs are msgpack binary frames (JSON
text frames are accepted as input too); errors and control messages are JSON text frames
``{"type": "x-fal-error", "error": ..., "reason": ...}``. Each input runs as one direct
request on the app's runners, so placement, multiplexing and scaling are the same as HTTP.
A session that sends nothing for the endpoint's ``session_timeout`` is told ``TIMEOUT`` and
closed with a normal close (1000). A session acts for a key (the one it sent, or the one that
minted its token): messages count against that key's concurrency limit and usage, and
revoking the key ends the session.
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
from openfal.auth.keys import EVERYONE, AuthError, Principal
from openfal.dispatcher.dispatcher import KeyAtLimit, ShuttingDown
from openfal.dispatcher.jobs import Job, Priority
from openfal.files.lifecycle import InvalidLifecycle, requested_lifecycle
from openfal.gateway.auth import identify
from openfal.gateway.http import HTTPError
from openfal.gateway.intake import forwarded_headers
from openfal.gateway.run import next_partial
from openfal.server import Platform
from openfal.store.base import Mode, Outcome

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
    try:
        caller = await _caller(websocket, platform, app)
    except (tokens.TokenError, AuthError, HTTPError) as exc:
        await _refuse(websocket, exc.detail if isinstance(exc, HTTPError) else str(exc))
        return
    try:
        requested_lifecycle(websocket.headers)
    except InvalidLifecycle as exc:
        await _send_error(websocket, "VALIDATION_ERROR", json.dumps(exc.detail))
        await websocket.close(code=POLICY_VIOLATION)
        return
    assert spec.realtime is not None and spec.input_model is not None
    revoked = asyncio.Event()
    stop_watching = (platform.keyring.on_revoke(caller.key_id, revoked.set)
                     if caller is not None and caller.key_id is not None else None)
    try:
        await _serve(websocket, platform, app, spec, caller, revoked)
    except WebSocketDisconnect:
        return
    finally:
        if stop_watching is not None:
            stop_watching()


async def _serve(websocket: WebSocket, platform: Platform, app: ServedApp, spec: Any,
                 caller: Principal | None, revoked: asyncio.Event) -> None:
    """Answer the session's messages until it ends: the client leaves, it stays silent past
    the endpoint's ``session_timeout``, or its key is revoked."""
    timeout = spec.realtime.session_timeout
    while True:
        message = await _next_message(websocket, revoked, timeout)
        if message is None:
            await _send_error(websocket, "TIMEOUT", "no inputs, reconnect when needed!")
            await websocket.close(code=NORMAL_CLOSE)
            return
        if revoked.is_set():
            await _refuse(websocket, "the API key was revoked")
            return
        if message["type"] == "websocket.disconnect":
            return
        await _answer(websocket, platform, app, spec, message, caller)


async def _next_message(websocket: WebSocket, revoked: asyncio.Event,
                        timeout: float) -> dict[str, Any] | None:
    """The next frame; an empty dict once the key is revoked; None after ``timeout``."""
    receiving = asyncio.ensure_future(websocket.receive())
    revocation = asyncio.ensure_future(revoked.wait())
    try:
        done, _ = await asyncio.wait({receiving, revocation}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        revocation.cancel()
    if receiving in done:
        return receiving.result()
    receiving.cancel()
    return {"type": "revoked"} if revocation in done else None


async def _caller(websocket: WebSocket, platform: Platform,
                  app: ServedApp) -> Principal | None:
    """Who the session acts for: the key that minted its realtime token
    (``fal_jwt_token``), or the API key it sent; None for anyone on a public app.
    Raises when neither is valid and the app is not public."""
    token = websocket.query_params.get("fal_jwt_token")
    if token is None:
        caller = await identify(websocket)
        if caller is None and app.cls.app_auth != "public":
            raise tokens.TokenError("a realtime token or an API key is needed")
        return caller
    key_id = tokens.verify(platform.signer, token, app.cls.app_name)
    if not platform.settings.auth:
        return EVERYONE
    if key_id is None:
        raise tokens.TokenError("the token names no API key; mint a new one")
    await platform.keyring.look_up(key_id)  # minted on another gateway for a new key?
    return platform.keyring.principal(key_id)


async def _refuse(websocket: WebSocket, reason: str) -> None:
    """End the session with an Unauthorized frame, in both clients' shapes: the JS client
    drops its token on ``{status, error}``; the Python client raises on ``x-fal-error``."""
    await websocket.send_text(json.dumps({
        "type": "x-fal-error", "status": "error", "error": "Unauthorized", "reason": reason}))
    await websocket.close(code=POLICY_VIOLATION)


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
    job = platform.dispatcher.new_job(
        app, spec.path, msgpack.packb(value, use_bin_type=True),
        forwarded_headers(websocket), Mode.DIRECT, Priority.DIRECT,
        # counted in usage; frames are not kept
        {"encoding": "msgpack", "transient_io": True,
         **({} if limit is None else {"key_limit": limit})}, key_id)
    job.stream_partials()
    try:
        running = await platform.dispatcher.start_direct(job)
    except KeyAtLimit as exc:
        await _send_error(websocket, "CONCURRENCY_LIMIT", str(exc))
        return
    except ShuttingDown:
        await _send_error(websocket, "SERVER_SHUTTING_DOWN", "the server is shutting down")
        return
    await _run(websocket, platform, job, running)


async def _run(websocket: WebSocket, platform: Platform, job: Job,
               running: asyncio.Future[Outcome]) -> None:
    assert job.partials is not None
    try:
        while (partial := await next_partial(job.partials, running)) is not None:
            await websocket.send_bytes(partial)
        outcome = running.result()
    finally:
        if not running.done():
            platform.dispatcher.abandon(job.id)
    if outcome.ok:
        await websocket.send_bytes(outcome.body)
    else:
        await _send_error(websocket, (outcome.error_type or "INTERNAL_ERROR").upper(),
                          outcome.error or "request failed")


async def _send_error(websocket: WebSocket, error: str, reason: str) -> None:
    await websocket.send_text(json.dumps({"type": "x-fal-error", "error": error,
                                          "reason": reason}))
