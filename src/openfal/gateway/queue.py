"""The queue API: submit, status (polled and streamed), result, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pydantic_core
from starlette.requests import Request
from starlette.responses import Response

from openfal.dispatcher.dispatcher import CancelResult, QueueFull
from openfal.dispatcher.jobs import Job
from openfal.gateway.auth import ensure_visible
from openfal.gateway.http import EventStream, HTTPError, json_response
from openfal.gateway.intake import (
    callable_endpoint,
    ensure_runnable,
    forwarded_headers,
    job_options,
    key_options,
    max_queue_length,
    may_name,
    validated_payload,
)
from openfal.gateway.urls import queue_urls
from openfal.gateway.webhook_routes import webhook_options
from openfal.server import Platform
from openfal.store.base import LogEntry, Mode, RequestRecord, Status

KEEPALIVE_SECONDS = 15.0
_TRUE = {"1", "true", "yes"}


async def submit(request: Request) -> Response:
    platform: Platform = request.app.state.platform
    app, spec = callable_endpoint(request, request.path_params["endpoint_id"])
    priority, options = job_options(request, Mode.QUEUE)
    key_id, key_limits = key_options(request)
    limit = max_queue_length(request)
    webhook = await webhook_options(request)
    payload = await validated_payload(request, platform, spec)
    ensure_runnable(platform, app, spec)
    job = platform.dispatcher.new_job(app, spec.path, payload, forwarded_headers(request),
                                      Mode.QUEUE, priority,
                                      {**options, **key_limits, **webhook}, key_id)
    try:
        await platform.dispatcher.submit(job, limit)
    except QueueFull:
        raise HTTPError(429, f"The queue of {app.app_id} is longer than {limit}",
                        "queue_full") from None
    body = {"status": Status.IN_QUEUE.value, "request_id": job.id,
            **queue_urls(request, job.app_id, job.id),
            "queue_position": await platform.dispatcher.queue_position(job.id) or 0}
    return json_response(body, 200, {"x-fal-request-id": job.id})


class _View:
    """A request as the status routes see it: live (watched by this gateway), or finished
    (from the dispatcher's memory of recent results, with their logs, or from the store),
    or unfinished but watched by no one here (read from the store)."""

    def __init__(self, job: Job | None, record: RequestRecord | None,
                 logs: list[LogEntry] | None = None):
        self.job = job
        self.record = record
        self.logs = logs

    @property
    def finished(self) -> bool:
        if self.job is not None:
            return False
        return self.record is not None and self.record.status is Status.COMPLETED


async def _lookup(request: Request) -> _View:
    platform: Platform = request.app.state.platform
    request_id = request.path_params["request_id"]
    app_id = f"{request.path_params['owner']}/{request.path_params['app']}"
    job = platform.dispatcher.jobs.get(request_id)
    if job is not None and job.app_id == app_id and job.mode is Mode.QUEUE:
        ensure_visible(request, job.key_id)
        return _View(job, None)
    recent = platform.dispatcher.recently_finished(request_id)
    if recent is not None and recent[0].app_id == app_id:
        ensure_visible(request, recent[0].key_id)
        return _View(None, *recent)
    record = await platform.store.get_request(request_id)
    if record is None:
        # Each attempt's own id (gateway_request_id) leads to its request too.
        original = await platform.store.request_id_for_attempt(request_id)
        record = await platform.store.get_request(original) if original else None
    if record is None or record.app_id != app_id or record.mode is not Mode.QUEUE:
        raise HTTPError(404, "Request not found", "request_not_found")
    ensure_visible(request, record.key_id)
    return _View(None, record)


async def _status_body(request: Request, view: _View, with_logs: bool,
                       logs_from: int = 0) -> dict[str, Any]:
    """The status object; with ``logs_from``, only log lines from that index on."""
    platform: Platform = request.app.state.platform
    if view.job is not None:
        job = view.job
        body: dict[str, Any] = {"status": job.status.value, "request_id": job.id,
                                **queue_urls(request, job.app_id, job.id)}
        if job.status is Status.IN_QUEUE:
            body["queue_position"] = await platform.dispatcher.queue_position(job.id) or 0
        skip = max(0, logs_from - job.logs_dropped)
        body["logs"] = [e.to_wire() for e in job.logs[skip:]] if with_logs else None
        if job.progress is not None:
            body["progress"] = job.progress
        return body
    record = view.record
    assert record is not None
    logs = view.logs
    if with_logs and logs is None:
        logs = await platform.store.get_logs(record.id, logs_from)
        logs_from = 0
    body = {"status": record.status.value, "request_id": record.id,
            **queue_urls(request, record.app_id, record.id),
            "logs": [e.to_wire() for e in (logs or [])[logs_from:]] if with_logs else None}
    if record.status is Status.IN_QUEUE:
        body["queue_position"] = await platform.dispatcher.queue_position(record.id) or 0
    elif record.status is Status.IN_PROGRESS:
        progress, _ = await platform.store.get_live(record.id)
        if progress is not None:
            body["progress"] = progress
    else:
        body["metrics"] = ({"inference_time": record.inference_time}
                           if record.inference_time is not None else {})
        if record.error is not None or record.error_type is not None:
            body["error"] = record.error
            body["error_type"] = record.error_type
    return body


def _wants_logs(request: Request) -> bool:
    if not may_name(request, b"logs"):
        return False  # most polls: no query string to parse
    return request.query_params.get("logs", "0").lower() in _TRUE


async def status(request: Request) -> Response:
    view = await _lookup(request)
    body = await _status_body(request, view, _wants_logs(request))
    return json_response(body, 200 if view.finished else 202)


async def status_stream(request: Request) -> Response:
    view = await _lookup(request)
    with_logs = _wants_logs(request)
    platform: Platform = request.app.state.platform
    if view.job is None and not view.finished:
        assert view.record is not None
        view = _View(await platform.dispatcher.watch(view.record), None)

    async def events() -> AsyncIterator[bytes]:
        # Each event carries only the log lines not sent before (the JS client accumulates
        # them) and the newest partial result when there is a new one. A wake that changed
        # nothing the caller sees (a log line it did not ask for) sends no event.
        nonlocal view
        sent_logs = 0
        sent_partial: bytes | None = None
        sent_event: bytes | None = None
        while True:
            if view.job is not None and (view.job.status is Status.COMPLETED
                                         or view.job.finished):
                # COMPLETED is set only once the outcome is committed (possibly before this
                # stream's first event): the final status comes from the store. A finished
                # job is checked too: a refresh that read the row before the end may still
                # set an older status after it, and nothing would wake this stream again.
                # Just finished, it is normally still in the dispatcher's memory.
                recent = platform.dispatcher.recently_finished(view.job.id)
                view = (_View(None, *recent) if recent is not None
                        else _View(None, await platform.store.get_request(view.job.id)))
            changed = view.job.changed() if view.job is not None else None
            body = await _status_body(request, view, with_logs, sent_logs)
            sent_logs += len(body["logs"] or [])
            partial = view.job.latest_partial if view.job is not None else None
            if partial is not None and partial is not sent_partial:
                body["partial"] = pydantic_core.from_json(partial)
                sent_partial = partial
            event = b"data: " + pydantic_core.to_json(body) + b"\n\n"
            if event != sent_event:
                yield event
                sent_event = event
            if changed is None or platform.dispatcher.drained:
                return  # finished, or the server is stopping (the client reconnects)
            while not changed.is_set():
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"

    return EventStream(events(), {"cache-control": "no-store"})


async def result(request: Request) -> Response:
    view = await _lookup(request)
    record = view.record
    if record is None or record.result_status is None:
        raise HTTPError(400, "Request is still in progress", "request_in_progress")
    body = record.result_body
    if record.io_dropped_once_delivered:  # X-Fal-Store-IO: 0: this fetch delivers it
        platform: Platform = request.app.state.platform
        body = await platform.store.drop_payloads(record.id)
        platform.dispatcher.forget(record.id)
    if body is None:
        raise HTTPError(410, "The result is not kept: it was delivered once "
                        "(X-Fal-Store-IO: 0) or its payloads were deleted", "result_not_kept")
    headers = {"x-fal-request-id": record.id, **record.result_headers}
    return Response(body, record.result_status, headers, media_type="application/json")


async def cancel(request: Request) -> Response:
    view = await _lookup(request)
    platform: Platform = request.app.state.platform
    outcome = (CancelResult.ALREADY_COMPLETED if view.finished
               else await platform.dispatcher.cancel(view.job.id if view.job is not None
                                                     else view.record.id))
    if outcome is CancelResult.CANCELLATION_REQUESTED:
        return json_response({"status": outcome.value}, 202)
    return json_response({"status": CancelResult.ALREADY_COMPLETED.value}, 400)
