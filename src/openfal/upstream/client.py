"""An async client of an upstream's queue and storage APIs: the hosted platform's wire
format, which openfal serves too.

Queue (on ``queue_url``, ``Authorization: Key ...``)::

    POST {queue}/{endpoint_id}                                   submit: {request_id, ...}
    GET  {queue}/{owner}/{app}/requests/{id}/status/stream?logs=1   SSE of status objects
    GET  {queue}/{owner}/{app}/requests/{id}/status?logs=1       one status object
    GET  {queue}/{owner}/{app}/requests/{id}                     the result, with its status
    PUT  {queue}/{owner}/{app}/requests/{id}/cancel

Storage (on ``storage_url``), as ``@fal-ai/client`` uploads::

    POST {storage}/storage/upload/initiate?storage_type=fal-cdn-v3  {content_type, file_name}
         -> {upload_url, file_url};  then PUT upload_url with the bytes (no key: it is signed)

Every failure is one of three errors: :class:`UpstreamUnavailable` (no answer, a 5xx or a
429: worth trying again later), :class:`UpstreamAuthFailed` (401/403: the configured key is
wrong) and :class:`UpstreamRefused` (any other 4xx, with the upstream's body).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource

from openfal import __version__
from openfal.upstream.config import UpstreamConfig

STORAGE_TYPE = "fal-cdn-v3"
CONNECT_TIMEOUT = 10.0
# A status stream may be quiet between keep-alive comments (15 s on openfal and fal).
STREAM_READ_TIMEOUT = 45.0
STREAM_END_SECONDS = 1.0  # after COMPLETED, for the end of the stream
USER_AGENT = f"openfal-upstream/{__version__}"


# httpx logs every request at INFO, and a runner puts what a request logs into its logs:
# the calls made for a routed request are left out of them.
_quiet = contextvars.ContextVar("openfal_upstream_quiet", default=False)


class _LeaveOutQuietCalls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet.get()


logging.getLogger("httpx").addFilter(_LeaveOutQuietCalls())


def quiet_http_logs() -> None:
    """Leave httpx's request lines out of the logs for the rest of the current task."""
    _quiet.set(True)


class UpstreamError(Exception):
    def __init__(self, upstream: str, message: str, status: int | None = None,
                 body: Any = None):
        super().__init__(f"upstream {upstream}: {message}")
        self.upstream = upstream
        self.status = status
        self.body = body


class UpstreamUnavailable(UpstreamError):
    """No answer, a 5xx or a 429. ``maybe_received`` is True when the request was sent
    whole and only the answer is missing: the upstream may have acted on it."""

    def __init__(self, upstream: str, message: str, status: int | None = None,
                 body: Any = None, maybe_received: bool = False):
        super().__init__(upstream, message, status, body)
        self.maybe_received = maybe_received


class UpstreamAuthFailed(UpstreamError):
    """401 or 403: the upstream refuses the configured key."""


class UpstreamRefused(UpstreamError):
    """Any other 4xx: the upstream will not do it (its body says why)."""


@dataclass(frozen=True)
class UpstreamResult:
    status: int
    body: bytes
    headers: httpx.Headers

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class UpstreamClient:
    """One upstream's API, over one connection pool."""

    def __init__(self, config: UpstreamConfig):
        self.config = config
        self.http = self._client(keep_alive=100)
        # Submits go on a connection of their own. One taken from the pool may have been
        # closed by the upstream just before use (a restart): sending on it fails as if the
        # request might have arrived, and a submit that might have arrived is never sent
        # again. A new connection fails to connect instead, which is certain and retried.
        self.submits = self._client(keep_alive=0)

    def _client(self, keep_alive: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.timeout,
                                  connect=min(self.config.timeout, CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=keep_alive),
            headers={"user-agent": USER_AGENT})

    @property
    def name(self) -> str:
        return self.config.name

    def auth_headers(self) -> dict[str, str]:
        """``Authorization: Key ...`` from the variable ``key_env`` names (none without it)."""
        if self.config.key_env is None:
            return {}
        key = self.config.key
        if not key:
            raise UpstreamAuthFailed(self.name, f"its key is read from ${self.config.key_env}, "
                                     "which is not set in the server's environment")
        return {"authorization": f"Key {key}"}

    def request_url(self, endpoint_id: str, request_id: str) -> str:
        """Where a request's status, result and cancel live: under ``owner/app`` alone (the
        endpoint's sub-path is not part of them)."""
        app_id = "/".join(endpoint_id.strip("/").split("/")[:2])
        return f"{self.config.queue_url}/{app_id}/requests/{request_id}"

    # The queue
    async def submit(self, endpoint_id: str, payload: dict[str, Any],
                     headers: dict[str, str] | None = None) -> str:
        """Submit; the upstream's request id once it has accepted the request."""
        response = await self._send("POST", f"{self.config.queue_url}/{endpoint_id.strip('/')}",
                                    json=payload, headers={**(headers or {}),
                                                           **self.auth_headers()},
                                    via=self.submits)
        answer = _json(response)
        request_id = answer.get("request_id") if isinstance(answer, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise UpstreamUnavailable(self.name, "its submit answer has no request_id",
                                      response.status_code, answer, maybe_received=True)
        return request_id

    async def status(self, endpoint_id: str, request_id: str) -> dict[str, Any]:
        """One status object, with every log line so far."""
        response = await self._send("GET", self.request_url(endpoint_id, request_id) + "/status",
                                    params={"logs": "1"}, headers=self.auth_headers())
        return _parsed_status(self.name, response.text)

    async def status_events(self, endpoint_id: str, request_id: str
                            ) -> AsyncIterator[dict[str, Any]]:
        """Status objects from one connection to the status stream, until the upstream ends
        it (after ``COMPLETED``, or when it goes away). Each carries the log lines that
        earlier events of the same connection did not. A server that answers with one JSON
        status instead of a stream gives that one event.

        Iterate to the end rather than stopping at ``COMPLETED``: the stream is then read
        to its end, so its connection is kept for the next call instead of closed."""
        url = self.request_url(endpoint_id, request_id) + "/status/stream"
        timeout = httpx.Timeout(self.config.timeout,
                                connect=min(self.config.timeout, CONNECT_TIMEOUT),
                                read=max(self.config.timeout, STREAM_READ_TIMEOUT))
        try:
            async with self.http.stream("GET", url, params={"logs": "1"}, timeout=timeout,
                                        headers={"accept": "text/event-stream",
                                                 **self.auth_headers()}) as response:
                if not response.is_success:
                    await response.aread()
                    self._check(response)
                if not response.headers.get("content-type", "").startswith(
                        "text/event-stream"):
                    await response.aread()
                    yield _parsed_status(self.name, response.text)
                    return
                events = EventSource(response).aiter_sse()
                async for event in events:
                    if not event.data:
                        continue
                    status = _parsed_status(self.name, event.data)
                    yield status
                    if status["status"] == "COMPLETED":
                        await _read_to_the_end(events)
                        return
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.name, f"status stream broke: {_describe(exc)}"
                                      ) from None

    async def result(self, endpoint_id: str, request_id: str) -> UpstreamResult:
        """The finished request's answer: its status and body, failures included."""
        response = await self._send("GET", self.request_url(endpoint_id, request_id),
                                    headers=self.auth_headers(), check=False)
        if not _is_outcome(response):
            self._check(response)
        return UpstreamResult(response.status_code, response.content, response.headers)

    async def cancel(self, endpoint_id: str, request_id: str, timeout: float) -> bool:
        """Ask the upstream to cancel; whether it took the cancel (False: it had finished)."""
        response = await self._send("PUT", self.request_url(endpoint_id, request_id) + "/cancel",
                                    headers=self.auth_headers(), timeout=timeout, check=False)
        if response.status_code == 400:
            return False
        self._check(response)
        return True

    # Storage
    async def upload(self, content: AsyncIterable[bytes], size: int, content_type: str,
                     file_name: str) -> str:
        """Store a file in the upstream's storage; its URL there."""
        initiated = await self._send(
            "POST", f"{self.config.storage_url}/storage/upload/initiate",
            params={"storage_type": STORAGE_TYPE},
            json={"content_type": content_type, "file_name": file_name},
            headers=self.auth_headers())
        answer = _json(initiated)
        if not (isinstance(answer, dict) and isinstance(answer.get("upload_url"), str)
                and isinstance(answer.get("file_url"), str)):
            raise UpstreamUnavailable(self.name, "its upload initiate answer has no "
                                      "upload_url and file_url", initiated.status_code, answer)
        await self._send("PUT", answer["upload_url"], content=content,
                         headers={"content-type": content_type, "content-length": str(size)})
        return answer["file_url"]

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.submits.aclose()

    # Plumbing
    async def _send(self, method: str, url: str, check: bool = True,
                    via: httpx.AsyncClient | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = await (via or self.http).request(method, url, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                httpx.WriteError, httpx.WriteTimeout, httpx.UnsupportedProtocol) as exc:
            # The request never reached the upstream whole: it cannot have acted on it.
            raise UpstreamUnavailable(self.name, f"{method} {url}: {_describe(exc)}") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.name, f"{method} {url}: {_describe(exc)}",
                                      maybe_received=True) from None
        if check:
            self._check(response)
        return response

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if response.is_success:
            return
        body = _json(response) if response.content else None
        if body is None and response.content:
            body = response.text[:1000]
        where = f"{response.request.method} {response.request.url.copy_with(query=None)}"
        if status in (401, 403):
            raise UpstreamAuthFailed(self.name, f"{where} refused the key from "
                                     f"${self.config.key_env} ({status})", status, body)
        if status == 429 or status >= 500:
            raise UpstreamUnavailable(self.name, f"{where} answered {status}", status, body)
        raise UpstreamRefused(self.name, f"{where} answered {status}", status, body)


async def _read_to_the_end(events: AsyncIterator[Any]) -> None:
    """The server ends a status stream after ``COMPLETED``; wait briefly for that (what
    goes wrong meanwhile changes nothing: the status is known)."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(STREAM_END_SECONDS):
            async for _ in events:
                pass


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _is_outcome(response: httpx.Response) -> bool:
    """Whether a result answer is the request's own outcome (a failure of the app
    included), not the queue saying it cannot give one: a refused key, a rate limit, an
    unknown or unfinished request, or a 5xx of a gateway in trouble, which carries neither
    the ``X-Fal-Error-Type`` the queue stores with a failure nor a JSON ``detail``."""
    status = response.status_code
    if response.is_success:
        return True
    body = _json(response)
    body = body if isinstance(body, dict) else {}
    if status in (401, 403, 429) or body.get("error_type") in ("request_not_found",
                                                               "request_in_progress"):
        return False
    if status >= 500:
        return ("x-fal-error-type" in response.headers or "detail" in body
                or "error_type" in body)
    return True


def _parsed_status(upstream: str, text: str) -> dict[str, Any]:
    try:
        status = json.loads(text)
    except ValueError:
        status = None
    if not (isinstance(status, dict) and isinstance(status.get("status"), str)):
        raise UpstreamUnavailable(upstream, f"sent a status that is not a status object: "
                                  f"{text[:200]!r}")
    return status


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
