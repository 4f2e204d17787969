"""A routed request, from inside the runner that serves it: ``forward()``.

A routed endpoint is an ordinary app endpoint whose body is ``return await
forward(self.current_request, "<endpoint id>", input)``, so everything a caller sees of an
openfal request (its id, queue position, key limits, usage, webhooks, status streams) is
openfal's own; the upstream is a client of this runner. ``forward``:

1. **Resumes** when an earlier attempt of this request already got an upstream request id
   (``ctx.saved_state``; after a lost runner or a server restart): that request is followed
   again and never submitted twice (a paid video job would run twice).
2. Otherwise copies the input's files of this server's storage to the upstream's storage
   (``files.share_inputs``), **submits** (``POST {queue_url}/{endpoint_id}``) and saves the
   upstream's request id with ``ctx.save_state`` before doing anything else. A submit that
   never reached the upstream (no connection, a 5xx or 429 answer) is tried again a few
   times, then ends the attempt with a 502 that the dispatcher retries on a new attempt
   (``X-Fal-Needs-Retry: 1``; a 502, so the runner is not replaced). A submit whose answer
   was lost after it was sent is not retried: the upstream may have taken it.
3. **Follows** the upstream's status stream (``.../status/stream?logs=1``): each event
   brings the new log lines, mirrored into this request's logs with their level; queue
   positions become log lines, progress becomes this request's progress (and a partial
   result in an event, as openfal's streams carry, this request's partial). A stream that
   breaks is reopened (log lines already mirrored are skipped: their count is saved with
   the state); a server without a status stream is polled instead. An upstream that stays
   unreachable for ``give_up_after`` seconds ends the request with a 502.
4. Fetches the **result**: a success is returned with its output files re-hosted
   (``rehost``); a failure keeps the upstream's status and detail (a 422's ``loc`` too).
   After the upstream accepted a request, every failure says ``X-Fal-Needs-Retry: 0``.
5. **Cancel**: when this request is cancelled (the task gets ``CancelledError``), the
   upstream request is cancelled too, then the cancellation goes on.

Why the status stream rather than polling: a change reaches openfal as soon as the upstream
has it (polling adds half an interval to every request) and each event carries only the
new log lines, where every poll repeats all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from openfal.app.context import RequestContext
from openfal.app.errors import AppException, FieldErrors, RequestCancelled
from openfal.upstream.client import (
    UpstreamAuthFailed,
    UpstreamClient,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
    quiet_http_logs,
)
from openfal.upstream.config import UpstreamConfig, UpstreamSet
from openfal.upstream.files import RehostFailed, rehost_outputs, share_inputs
from openfal.upstream.placement import NOT_CONFIGURED, not_configured

SUBMIT_TRIES = 3
SUBMIT_BACKOFF_SECONDS = 0.25  # doubles after each try
RECONNECT_BACKOFF_SECONDS = (0.1, 2.0)  # first and longest wait while the upstream is down
CANCEL_TIMEOUT_SECONDS = 3.0  # within an app's default cancel_grace_period
# The caller's headers that mean the same at the upstream.
FORWARDED_HEADERS = ("x-fal-object-lifecycle-preference", "x-fal-runner-hint",
                     "x-fal-queue-priority")
RETRY = {"x-fal-needs-retry": "1"}
NO_RETRY = {"x-fal-needs-retry": "0"}


async def forward(ctx: RequestContext | None, endpoint_id: str,
                  input: BaseModel | None) -> dict[str, Any]:
    """Run this request at the upstream configured for ``endpoint_id``; its result."""
    if ctx is None:
        raise RuntimeError("forward() is called from inside an endpoint, with its request")
    quiet_http_logs()
    upstream = _upstream_for(ctx, endpoint_id)
    request = RoutedRequest(ctx, upstream, _client(upstream), endpoint_id)
    try:
        return await request.run(input)
    except UpstreamAuthFailed as exc:
        raise AppException(f"{exc}. Check the key the server's environment gives it in "
                           f"${upstream.key_env}.", 502, "upstream_auth_failed",
                           NO_RETRY) from None


def _upstream_for(ctx: RequestContext, endpoint_id: str) -> UpstreamConfig:
    """The upstream an earlier attempt submitted to, else the first whose patterns match."""
    upstreams = _upstreams()
    started_at = (ctx.saved_state or {}).get("upstream")
    if started_at is not None:
        named = next((u for u in upstreams.entries if u.name == started_at), None)
        if named is None:
            raise AppException(f"this request was submitted to upstream {started_at}, which "
                               "the server's config no longer has", 502,
                               NOT_CONFIGURED, NO_RETRY)
        return named
    upstream = upstreams.for_endpoint(endpoint_id)
    if upstream is None:
        raise AppException(not_configured(endpoint_id), 503, NOT_CONFIGURED, NO_RETRY)
    return upstream


def upstream_serves(endpoint_id: str) -> bool:
    """Whether this runner's configuration has an upstream for ``endpoint_id``."""
    return _upstreams().for_endpoint(endpoint_id) is not None


def upstreams_configured() -> bool:
    return bool(_upstreams().entries)


@functools.cache
def _upstreams() -> UpstreamSet:
    return UpstreamSet.from_environment()


@functools.cache
def _client(upstream: UpstreamConfig) -> UpstreamClient:
    """One client (one connection pool) per upstream for the runner's lifetime."""
    return UpstreamClient(upstream)


class RoutedRequest:
    def __init__(self, ctx: RequestContext, upstream: UpstreamConfig, client: UpstreamClient,
                 endpoint_id: str):
        self.ctx = ctx
        self.upstream = upstream
        self.client = client
        self.endpoint_id = endpoint_id
        self.request_id: str | None = None
        self.logs_seen = 0  # upstream log lines already mirrored here
        self.queue_position: int | None = None
        self.progress: tuple[Any, ...] | None = None
        self.last_contact = time.monotonic()
        self.unreachable = False
        self.backoff = RECONNECT_BACKOFF_SECONDS[0]

    @property
    def name(self) -> str:
        return self.upstream.name

    async def run(self, input: BaseModel | None) -> dict[str, Any]:
        if not self.resume():
            await self.submit(input)
        try:
            await self.follow()
            result = await self.result()
            if self.upstream.rehost:
                result = await rehost_outputs(self.upstream, result)
        except (asyncio.CancelledError, RequestCancelled):
            await self.cancel_upstream()
            raise
        except RehostFailed as exc:
            # The upstream's result stays there: a new attempt fetches it again.
            raise AppException(str(exc), 502, "upstream_file_unavailable", RETRY) from None
        return result

    # Submitting, once
    def resume(self) -> bool:
        state = self.ctx.saved_state or {}
        if not (state.get("request_id") and state.get("endpoint_id") == self.endpoint_id):
            return False
        self.request_id = str(state["request_id"])
        self.logs_seen = int(state.get("logs_seen", 0))
        self.ctx.log(f"resuming upstream request {self.request_id} at {self.name} "
                     "(not submitting it again)")
        return True

    async def submit(self, input: BaseModel | None) -> None:
        payload = (input.model_dump(mode="json", by_alias=True, exclude_unset=True)
                   if input is not None else {})
        headers = {name: value for name, value in self.ctx.headers.items()
                   if name.lower() in FORWARDED_HEADERS}
        for attempt in range(1, SUBMIT_TRIES + 1):
            try:
                payload = await share_inputs(self.client, payload)
                self.request_id = await self.client.submit(self.endpoint_id, payload, headers)
                break
            except UpstreamUnavailable as exc:
                if exc.maybe_received:
                    raise AppException(f"{exc}; the upstream may have accepted the request, "
                                       "so it is not submitted again", 504,
                                       "upstream_timeout", NO_RETRY) from None
                if attempt == SUBMIT_TRIES:
                    raise AppException(f"{exc} (tried {SUBMIT_TRIES} times)", 502,
                                       "upstream_unavailable", RETRY) from None
                await asyncio.sleep(SUBMIT_BACKOFF_SECONDS * 2 ** (attempt - 1))
            except UpstreamRefused as exc:
                raise _failure(exc.status or 400, exc.body) from None
        self.save()
        self.ctx.log(f"forwarded to upstream {self.name} as request {self.request_id}")

    def save(self) -> None:
        self.ctx.save_state({"upstream": self.name, "endpoint_id": self.endpoint_id,
                             "request_id": self.request_id, "logs_seen": self.logs_seen})

    # Following
    async def follow(self) -> None:
        """Mirror the upstream's status into this request until it is COMPLETED."""
        polling = False
        while True:
            try:
                events = self.poll() if polling else self.client.status_events(
                    self.endpoint_id, self._id)
                if await self.mirror(events):
                    return
            except UpstreamRefused as exc:
                if polling:
                    raise self.lost(exc) from None
                polling = True  # no status stream there (or the request is gone: see next)
                continue
            except UpstreamUnavailable as exc:
                await self.wait_for_upstream(exc)
                continue
            # The stream ended early (the upstream restarting, a proxy timing out).
            await asyncio.sleep(self.upstream.poll_interval)

    async def poll(self) -> AsyncIterator[dict[str, Any]]:
        yield await self.client.status(self.endpoint_id, self._id)

    async def mirror(self, events: AsyncIterator[dict[str, Any]]) -> bool:
        """Mirror one connection's events; whether the last one was COMPLETED."""
        received = 0  # log lines this connection sent (it starts from the first line)
        completed = False
        async with contextlib.aclosing(events):
            async for status in events:
                self.reached()
                received = self.mirror_logs(status.get("logs") or [], received)
                self.mirror_position(status)
                self.mirror_progress(status.get("progress"))
                if "partial" in status:  # openfal's streams carry its newest partial result
                    self.ctx.partial(status["partial"])
                completed = status["status"] == "COMPLETED"
        return completed

    def mirror_logs(self, lines: list[Any], received: int) -> int:
        new = lines[max(0, self.logs_seen - received):]
        for line in new:
            entry = line if isinstance(line, dict) else {"message": str(line)}
            self.ctx.log(str(entry.get("message", "")), level=str(entry.get("level") or "INFO"),
                         source=str(entry.get("source") or "USER"))
        received += len(lines)
        if new:
            self.logs_seen = received
            self.save()
        return received

    def mirror_position(self, status: dict[str, Any]) -> None:
        position = status.get("queue_position") if status["status"] == "IN_QUEUE" else None
        if position is not None and position != self.queue_position:
            self.ctx.log(f"upstream queue position {position}")
        self.queue_position = position

    def mirror_progress(self, progress: Any) -> None:
        if not (isinstance(progress, dict) and isinstance(progress.get("step"), int)
                and isinstance(progress.get("total"), int)):
            return
        value = (progress["step"], progress["total"], progress.get("message"))
        if value != self.progress:
            self.progress = value
            self.ctx.progress(*value)

    def reached(self) -> None:
        self.last_contact = time.monotonic()
        self.backoff = RECONNECT_BACKOFF_SECONDS[0]
        if self.unreachable:
            self.unreachable = False
            self.ctx.log(f"upstream {self.name} is reachable again")

    async def wait_for_upstream(self, exc: UpstreamUnavailable) -> None:
        """Back off before trying again; past ``give_up_after`` seconds without contact,
        end the request."""
        down_for = time.monotonic() - self.last_contact
        if down_for > self.upstream.give_up_after:
            raise AppException(
                f"upstream {self.name} could not be reached for {down_for:.0f} s while it was "
                f"working on request {self.request_id}; giving up ({exc})", 502,
                "upstream_unavailable", NO_RETRY) from None
        if not self.unreachable:
            self.unreachable = True
            self.ctx.log(f"upstream {self.name} unreachable, trying again: {exc}", "WARN")
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, RECONNECT_BACKOFF_SECONDS[1])

    # Result and cancel
    async def result(self) -> dict[str, Any]:
        while True:
            try:
                answer = await self.client.result(self.endpoint_id, self._id)
                break
            except UpstreamUnavailable as exc:
                await self.wait_for_upstream(exc)
            except UpstreamRefused as exc:
                raise self.lost(exc) from None
        body = answer.json()
        if not answer.status < 300:
            self.ctx.log(f"upstream request {self.request_id} failed with {answer.status}",
                         "WARN")
            raise _failure(answer.status, body, answer.headers.get("x-fal-error-type"))
        if not isinstance(body, dict):
            raise AppException(f"upstream {self.name} answered a result that is not a JSON "
                               "object", 502, "upstream_bad_response", NO_RETRY)
        units = answer.headers.get("x-fal-billable-units")
        with contextlib.suppress(TypeError, ValueError):
            self.ctx.billable_units = float(units)  # type: ignore[arg-type]
        return body

    async def cancel_upstream(self) -> None:
        if self.request_id is None:
            return
        try:
            taken = await self.client.cancel(self.endpoint_id, self.request_id,
                                             CANCEL_TIMEOUT_SECONDS)
        except UpstreamError as exc:
            self.ctx.log(f"could not cancel upstream request {self.request_id}: {exc}", "WARN")
            return
        self.ctx.log(f"cancelled upstream request {self.request_id}" if taken else
                     f"upstream request {self.request_id} had already finished")

    def lost(self, exc: UpstreamRefused) -> AppException:
        return AppException(f"upstream {self.name} no longer knows request {self.request_id} "
                            f"({exc})", 502, "upstream_request_lost", NO_RETRY)

    @property
    def _id(self) -> str:
        assert self.request_id is not None
        return self.request_id


def _failure(status: int, body: Any, error_type: str | None = None) -> AppException:
    """The upstream's failure as this request's: same status, same detail (a 422's list
    keeps every ``loc``), same error type; never retried here."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(body, dict):
        error_type = body.get("error_type") or error_type
    if isinstance(detail, list):
        return FieldErrors(detail, status, NO_RETRY)
    message = detail if isinstance(detail, str) and detail else f"upstream answered {status}"
    return AppException(message, status, error_type, NO_RETRY)
