"""The worker API: how ``openfal worker`` processes on other hosts claim and report work.

Every route takes and answers msgpack (payloads are bytes) and needs an ADMIN key; each is
one call of the dispatcher's work API (worker/link.py describes the calls, and
docs/ARCHITECTURE.md the protocol and its failure cases):

    POST /api/worker/hello      {}  -> how runners are set up (files, public URL, owner, lease)
    POST /api/worker/claim      {worker_id, endpoint_ids, limit, wait, revision}
                                -> {assignments, waiting}
    POST /api/worker/renew      {worker_id, attempt_ids, watch, wait}  -> {lost, cancelled}
    POST /api/worker/events     {events: [[attempt_id, message], ...]} -> {}
    POST /api/worker/finish     {attempt_id, result, started}          -> {recorded}
    POST /api/worker/hand-back  {attempt_id, request_id, started}      -> {recorded}
    POST /api/worker/secrets    {names}                                -> {secrets}
    POST /api/worker/apps       {}                   -> {apps: [current revision, ...]}
    POST /api/worker/app-bundle {app_id, revision}   -> {bundle}  (None: no such revision)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from openfal.gateway.http import HTTPError, read_body, until_disconnected
from openfal.server import Platform
from openfal.worker.link import (
    ClaimReply,
    decode_body,
    encode_body,
    report_from_wire,
    result_from_wire,
)

M = TypeVar("M", bound=BaseModel)
MAX_BODY = 1024 * 1024 * 1024  # a result may carry inline files
MAX_WAIT = 60.0


class ClaimBody(BaseModel):
    worker_id: str = Field(min_length=1, max_length=200)
    endpoint_ids: list[str] = Field(max_length=10_000)
    limit: int = Field(ge=0, le=1024)
    wait: float = Field(ge=0, le=MAX_WAIT)
    revision: int | None = None


class RenewBody(BaseModel):
    worker_id: str = Field(min_length=1, max_length=200)
    attempt_ids: list[str] = Field(max_length=10_000)
    watch: list[str] = Field(max_length=10_000)
    wait: float = Field(ge=0, le=MAX_WAIT)


class EventsBody(BaseModel):
    events: list[tuple[str, list[Any]]] = Field(max_length=10_000)


class FinishBody(BaseModel):
    attempt_id: str
    result: list[Any]
    started: bool = True


class HandBackBody(BaseModel):
    attempt_id: str
    request_id: str
    started: bool


class SecretsBody(BaseModel):
    names: list[str] | None = Field(max_length=10_000)


class EmptyBody(BaseModel):
    pass


class BundleBody(BaseModel):
    app_id: str = Field(max_length=400)
    revision: int


async def _body(request: Request, model: type[M]) -> M:
    raw = await read_body(request, MAX_BODY)
    try:
        return model.model_validate(decode_body(raw))
    except ValidationError as exc:
        raise HTTPError(422, exc.errors(include_url=False, include_input=False)) from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise HTTPError(400, "The body is not msgpack", "invalid_body") from None


def _answer(value: Any) -> Response:
    return Response(encode_body(value), media_type="application/msgpack")


def _platform(request: Request) -> Platform:
    return request.app.state.platform


async def hello(request: Request) -> Response:
    platform = _platform(request)
    settings = platform.settings
    return _answer({"owner": settings.owner, "lease_seconds": settings.lease_seconds,
                    "files": settings.files, "public_url": platform.public_url,
                    "file_ttl_seconds": settings.default_file_ttl_seconds,
                    "max_download_bytes": settings.max_download_bytes,
                    "allow_networks": settings.allow_networks})


async def claim(request: Request) -> Response:
    body = await _body(request, ClaimBody)
    claiming = asyncio.ensure_future(_platform(request).dispatcher.claim(
        body.worker_id, body.endpoint_ids, body.limit, body.wait, body.revision))
    if await until_disconnected(request.receive, claiming):
        # The worker is gone (it died while waiting): it must not be handed work. The claim
        # may have been answered all the same (work handed to it as it was cancelled).
        claiming.cancel()
        claiming.add_done_callback(functools.partial(_unanswered, _platform(request)))
        return Response(status_code=499)
    reply = claiming.result()
    return _answer({"assignments": [asdict(a) for a in reply.assignments],
                    "waiting": reply.waiting})


def _unanswered(platform: Platform, claiming: asyncio.Future[ClaimReply]) -> None:
    if not claiming.cancelled() and claiming.exception() is None:
        platform.dispatcher.unanswered(claiming.result())


async def renew(request: Request) -> Response:
    body = await _body(request, RenewBody)
    report = await _platform(request).dispatcher.renew(body.worker_id, body.attempt_ids,
                                                       body.watch, body.wait)
    return _answer({"lost": report.lost, "cancelled": report.cancelled})


async def events(request: Request) -> Response:
    body = await _body(request, EventsBody)
    dispatcher = _platform(request).dispatcher
    try:
        reports = [(attempt_id, report_from_wire(item)) for attempt_id, item in body.events]
    except (TypeError, ValueError) as exc:
        raise HTTPError(422, f"Malformed event: {exc}", "invalid_body") from None
    for attempt_id, report in reports:
        dispatcher.report(attempt_id, report)
    return _answer({})


async def finish(request: Request) -> Response:
    body = await _body(request, FinishBody)
    try:
        result = result_from_wire(body.result)
    except (TypeError, ValueError) as exc:
        raise HTTPError(422, f"Malformed result: {exc}", "invalid_body") from None
    recorded = await _platform(request).dispatcher.finish(body.attempt_id, result,
                                                          body.started)
    return _answer({"recorded": recorded})


async def hand_back(request: Request) -> Response:
    body = await _body(request, HandBackBody)
    recorded = await _platform(request).dispatcher.hand_back(body.attempt_id, body.request_id,
                                                             body.started)
    return _answer({"recorded": recorded})


async def secrets(request: Request) -> Response:
    body = await _body(request, SecretsBody)
    return _answer({"secrets": await _platform(request).dispatcher.secrets(body.names)})


async def apps(request: Request) -> Response:
    await _body(request, EmptyBody)
    current = await _platform(request).dispatcher.deployed_apps()
    return _answer({"apps": [asdict(revision) for revision in current.values()]})


async def app_bundle(request: Request) -> Response:
    body = await _body(request, BundleBody)
    bundle = await _platform(request).dispatcher.app_bundle(body.app_id, body.revision)
    return _answer({"bundle": bundle})


ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
    ("/api/worker/hello", hello), ("/api/worker/claim", claim),
    ("/api/worker/renew", renew), ("/api/worker/events", events),
    ("/api/worker/finish", finish), ("/api/worker/hand-back", hand_back),
    ("/api/worker/secrets", secrets), ("/api/worker/apps", apps),
    ("/api/worker/app-bundle", app_bundle)]
