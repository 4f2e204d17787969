"""How a worker reaches the platform: the work it claims and what it says about it.

Two implementations, one interface: the gateway's own :class:`~openfal.dispatcher.
dispatcher.Dispatcher` (the runners of ``openfal serve``, in the same process), and
:class:`HttpLink`, which carries the same calls to a gateway's ``/api/worker/*`` routes
(``openfal worker`` on another host). Every call names the attempt it is about; the
platform refuses (False, or ``lost``) whatever concerns an attempt that is no longer the
request's current one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import msgpack

from openfal.runner.protocol import Log, Partial, Progress, Result, Run, SavedState, pack, unpack
from openfal.store.base import AppRevision, Claim, LeaseReport

log = logging.getLogger(__name__)

Report = Log | Progress | Partial | SavedState


@dataclass
class Assignment:
    """One attempt of a request, given to a worker."""

    request_id: str
    attempt_id: str
    endpoint_id: str
    path: str
    payload: bytes
    headers: dict[str, str]
    encoding: str
    stream: bool
    saved_state: dict[str, Any] | None
    runner_hint: str | None

    @classmethod
    def from_claim(cls, claim: Claim) -> Assignment:
        request = claim.request
        return cls(request_id=request.id, attempt_id=claim.attempt_id,
                   endpoint_id=request.endpoint_id, path=request.path,
                   payload=request.payload, headers=request.headers,
                   encoding=request.options.get("encoding", "json"),
                   stream=bool(request.options.get("stream")),
                   saved_state=request.options.get("saved_state"),
                   runner_hint=request.options.get("runner_hint"))

    def run_message(self) -> Run:
        return Run(self.request_id, self.path, self.endpoint_id, self.payload, self.headers,
                   self.stream, self.encoding, self.saved_state)


@dataclass
class ClaimReply:
    assignments: list[Assignment]
    waiting: int  # requests for these endpoints still waiting after this claim


class WorkLink(Protocol):
    async def claim(self, worker_id: str, endpoint_ids: list[str], limit: int,
                    wait: float, revision: int | None = None) -> ClaimReply:
        """Up to ``limit`` attempts to run now; with none to give, waits up to ``wait``
        seconds for work to arrive (``limit`` 0: only for the count of waiting work). A
        deployed app's pool names its ``revision``: a superseded one gets nothing."""
        ...

    async def renew(self, worker_id: str, attempt_ids: list[str], watch: list[str],
                    wait: float) -> LeaseReport:
        """Extend the leases of ``attempt_ids``; then, unless something is to be stopped
        already, wait up to ``wait`` seconds for a cancel of one of the ``watch`` requests."""
        ...

    def report(self, attempt_id: str, message: Report) -> None:
        """Logs, progress, partial results and saved state, delivered in order."""
        ...

    async def finish(self, attempt_id: str, result: Result, started: bool = True) -> bool:
        """The attempt's result (after every report made before it); False: refused, the
        attempt was no longer the request's current one. Not ``started``: the request
        never reached a runner (none could be set up), so no attempt is recorded."""
        ...

    async def hand_back(self, attempt_id: str, request_id: str, started: bool) -> bool:
        """Back to the queue: the worker is stopping (``started``: the attempt is recorded
        as interrupted, without using up a retry), or it has no runner left for an attempt
        it just claimed (not ``started``: as if never claimed)."""
        ...

    async def deployed_apps(self) -> dict[str, AppRevision]:
        """The current revision of every deployed app (``openfal deploy``), by app id."""
        ...

    async def app_bundle(self, app_id: str, revision: int) -> bytes | None:
        """The code of one revision of a deployed app (see app/bundle.py)."""
        ...

    async def secrets(self, names: list[str] | None) -> dict[str, bytes]:
        """The app secrets ``names`` (those of them that are set; None: every one), sealed:
        the worker opens them with its own key (openfal/secrets.py)."""
        ...


WORKER_API = "/api/worker"
_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)


def encode_body(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def decode_body(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


class HttpLink:
    """The worker calls over HTTP to a gateway (or a load balancer in front of several),
    msgpack bodies, an ADMIN key. Reports are batched and sent in order by one task."""

    def __init__(self, server_url: str, key: str, *, timeout: float = 30.0):
        self.client = httpx.AsyncClient(
            base_url=server_url.rstrip("/") + WORKER_API,
            headers={"authorization": f"Key {key}", "content-type": "application/msgpack"},
            timeout=httpx.Timeout(timeout, connect=10.0))
        self._reports: asyncio.Queue[tuple[str, Report]] = asyncio.Queue()
        self._sender: asyncio.Task | None = None

    async def close(self) -> None:
        await self._flush()
        if self._sender is not None:
            self._sender.cancel()
        await self.client.aclose()

    async def _call(self, route: str, body: dict[str, Any], *, timeout: float | None = None,
                    retries: int = len(_RETRY_DELAYS)) -> Any:
        """POST with retries while the gateway cannot be reached (a gateway restarting
        behind the load balancer); its 4xx answers are errors at once."""
        for attempt in range(retries + 1):
            try:
                response = await self.client.post(
                    route, content=encode_body(body),
                    timeout=None if timeout is None else httpx.Timeout(timeout, connect=10.0))
                if response.status_code < 500:
                    response.raise_for_status()
                    return decode_body(response.content)
                error: Exception = httpx.HTTPStatusError(
                    f"{response.status_code} from {route}", request=response.request,
                    response=response)
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                error = exc
            if attempt == retries:
                raise error
            log.warning("worker API %s failed (%s); trying again", route, error)
            await asyncio.sleep(_RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)])
        raise AssertionError("unreachable")

    async def hello(self) -> dict[str, Any]:
        """How the gateway's runners are set up: where files go, the public URL, the owner
        of endpoint ids, the lease length (see gateway/worker_routes.hello)."""
        return await self._call("/hello", {}, retries=2)

    async def claim(self, worker_id: str, endpoint_ids: list[str], limit: int,
                    wait: float, revision: int | None = None) -> ClaimReply:
        reply = await self._call("/claim", {"worker_id": worker_id, "endpoint_ids": endpoint_ids,
                                            "limit": limit, "wait": wait, "revision": revision},
                                 timeout=wait + 30)
        return ClaimReply([Assignment(**a) for a in reply["assignments"]], reply["waiting"])

    async def renew(self, worker_id: str, attempt_ids: list[str], watch: list[str],
                    wait: float) -> LeaseReport:
        reply = await self._call("/renew", {"worker_id": worker_id, "attempt_ids": attempt_ids,
                                            "watch": watch, "wait": wait}, timeout=wait + 30)
        return LeaseReport(lost=reply["lost"], cancelled=reply["cancelled"])

    def report(self, attempt_id: str, message: Report) -> None:
        self._reports.put_nowait((attempt_id, message))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_reports())

    async def _send_reports(self) -> None:
        while not self._reports.empty():
            batch = []
            while not self._reports.empty() and len(batch) < 256:
                attempt_id, message = self._reports.get_nowait()
                batch.append([attempt_id, pack(message)])
            try:
                await self._call("/events", {"events": batch})
            except Exception:
                log.exception("lost %d reports the gateway could not take", len(batch))

    async def _flush(self) -> None:
        if self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def finish(self, attempt_id: str, result: Result, started: bool = True) -> bool:
        await self._flush()
        reply = await self._call("/finish", {"attempt_id": attempt_id, "result": pack(result),
                                             "started": started}, retries=20)
        return bool(reply["recorded"])

    async def hand_back(self, attempt_id: str, request_id: str, started: bool) -> bool:
        await self._flush()
        reply = await self._call("/hand-back", {"attempt_id": attempt_id,
                                                "request_id": request_id, "started": started})
        return bool(reply["recorded"])

    async def secrets(self, names: list[str] | None) -> dict[str, bytes]:
        reply = await self._call("/secrets", {"names": names})
        return reply["secrets"]

    async def deployed_apps(self) -> dict[str, AppRevision]:
        reply = await self._call("/apps", {})
        return {app["app_id"]: AppRevision(**app) for app in reply["apps"]}

    async def app_bundle(self, app_id: str, revision: int) -> bytes | None:
        reply = await self._call("/app-bundle", {"app_id": app_id, "revision": revision})
        return reply["bundle"]


def report_from_wire(item: list[Any]) -> Report:
    message = unpack(item)
    if not isinstance(message, Log | Progress | Partial | SavedState):
        raise ValueError(f"not a report: {message.tag}")
    return message


def result_from_wire(item: list[Any]) -> Result:
    message = unpack(item)
    if not isinstance(message, Result):
        raise ValueError(f"not a result: {message.tag}")
    return message
