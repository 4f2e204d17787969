"""What the platform keeps durably, independent of the database that keeps it."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from openfal.store.events import Notifier


class Status(enum.StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Mode(enum.StrEnum):
    QUEUE = "queue"
    DIRECT = "direct"


class HistoryStatus(enum.StrEnum):
    """A request's state as the request history shows it: a finished request is COMPLETED
    when its status code is below 400, FAILED otherwise (cancelled ones included)."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass
class RequestRecord:
    """One request as stored: its input, its options and, once finished, its outcome."""

    id: str
    app_id: str
    endpoint_id: str
    path: str
    mode: Mode
    status: Status
    payload: bytes
    created_at: float
    priority: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result_status: int | None = None
    result_body: bytes | None = None
    result_headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None
    key_id: str | None = None  # the API key that made the request; None: anonymous
    billable_units: float | None = None
    attempt_id: str | None = None  # the running (or last) attempt's id
    cancel_requested: bool = False

    @property
    def history_status(self) -> HistoryStatus:
        if self.status is not Status.COMPLETED:
            return HistoryStatus(self.status.value)
        ok = self.result_status is not None and self.result_status < 400
        return HistoryStatus.COMPLETED if ok else HistoryStatus.FAILED

    @property
    def io_dropped_once_delivered(self) -> bool:
        """Queued with ``X-Fal-Store-IO: 0``: its input and result are dropped once the
        result has been delivered (fetched once, or its webhook acknowledged)."""
        return self.options.get("store_io") is False


@dataclass
class Outcome:
    """How a request ended: the HTTP status and body its result fetch returns."""

    status: int
    body: bytes
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def billable_units(self) -> float | None:
        """What the app reported in ``x-fal-billable-units``, if it did."""
        try:
            return float(self.headers["x-fal-billable-units"])
        except (KeyError, ValueError):
            return None


@dataclass
class KeyRecord:
    """An API key as stored: the secret only as a hash."""

    id: str
    secret_hash: str
    scope: str
    name: str
    created_at: float
    revoked_at: float | None = None
    max_concurrency: int | None = None


@dataclass
class UsageRow:
    """Finished requests of one key on one endpoint over a time range."""

    key_id: str | None
    endpoint_id: str
    requests: int
    failed: int
    queue_seconds: float
    run_seconds: float
    attempts: int
    billable_units: float


@dataclass
class WebhookTarget:
    """Where a finished request is announced; committed together with its outcome."""

    url: str
    user_id: str


@dataclass
class WebhookRecord:
    """A request's webhook in the outbox.

    ``state`` is ``pending`` (waiting for ``next_attempt_at``), ``delivering`` (an attempt
    is under way), ``delivered`` or ``failed`` (gave up). ``attempts`` counts every attempt
    ever made; ``tries`` only those since the last (re)delivery began, against the limit.
    """

    request_id: str
    url: str
    user_id: str
    gateway_request_id: str
    state: str
    attempts: int
    tries: int
    created_at: float
    next_attempt_at: float | None
    delivered_at: float | None


@dataclass
class WebhookAttempt:
    """One delivery attempt: an HTTP status, or the error that prevented one."""

    attempt: int
    started_at: float
    finished_at: float | None = None
    status_code: int | None = None
    error: str | None = None
    duration: float | None = None


@dataclass
class HistoryQuery:
    """Which requests a page of the request history lists, newest first: those created in
    ``[start, end)`` (``end`` None: no bound), of one endpoint and key when given
    (``key_id`` None: every key's), in one state when given; ``before``, the
    ``(created_at, id)`` of the last request of the previous page, continues after it."""

    start: float
    end: float | None = None
    endpoint_id: str | None = None
    key_id: str | None = None
    status: HistoryStatus | None = None
    before: tuple[float, str] | None = None
    limit: int = 50


@dataclass
class LogEntry:
    message: str
    level: str
    source: str
    timestamp: float

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.message, "level": self.level, "source": self.source,
                "timestamp": datetime.fromtimestamp(self.timestamp, UTC).isoformat()}


@dataclass(frozen=True)
class AppRevision:
    """One deployed revision of an app's code."""

    app_id: str  # "owner/name"
    revision: int  # 1, 2, ... per app; never reused for that app, even after a rollback
    ref: str  # how to import it inside the bundle: "relative/path.py::ClassName"
    digest: str  # hex SHA-256 of the bundle
    size: int  # bytes of the bundle
    created_at: float  # Unix seconds


# The outcome of an attempt that never began (its worker had no runner for it, or none
# could be set up): ``requeue`` and ``complete`` forget it, as if no claim had been made.
UNSTARTED = "unstarted"


@dataclass
class Claim:
    """A request a worker took: the request as stored once claimed (``attempts`` counts
    this attempt) and the attempt's id, which every later word about it must carry."""

    request: RequestRecord
    attempt_id: str
    lease_expires_at: float
    worker_id: str


@dataclass
class LeaseReport:
    """What renewing leases found: attempts no longer held by the worker (their request
    ended or was given to another attempt: stop them), and attempts whose request a caller
    asked to cancel."""

    lost: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


class Store(Protocol):
    """The durable state of requests; the queue of waiting work is its ``requests`` table.

    Writes are applied in the order they are made and return a future that resolves once
    the change is committed: await it where durability matters before answering a caller
    (a new request, a result), drop it where a crash may lose the change harmlessly (log
    lines).

    Every change to a running request is fenced by its attempt id: ``complete`` and
    ``requeue`` change nothing (and say False) unless the attempt named is the request's
    current one, so a worker that lost its lease can never record a late result.
    """

    shared: bool
    """Whether several gateways may use the store at once (PostgreSQL) or only one
    process (SQLite, locked)."""
    notifier: Notifier

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations, under the store's lock)."""
        ...
    async def close(self) -> None: ...
    async def schema_version(self) -> int: ...

    # Requests and the queue
    def add_request(self, record: RequestRecord,
                    claim: Claim | None = None) -> asyncio.Future[None]:
        """Store a new request; with ``claim``, as already claimed by that attempt (a direct
        run handed straight to a free runner of this process)."""
        ...
    async def claim(self, endpoint_ids: Sequence[str], worker_id: str, *, limit: int,
                    lease_seconds: float, now: float) -> list[Claim]:
        """Take up to ``limit`` waiting requests of these endpoints, in priority then
        arrival order, skipping those whose start deadline has passed and those whose key
        already runs ``key_limit`` requests. Each gets a new attempt (recorded, with the
        worker's id) and a lease until ``now + lease_seconds``; committed before return."""
        ...
    async def renew_leases(self, worker_id: str, attempt_ids: Sequence[str],
                           until: float) -> LeaseReport: ...
    async def lapsed(self, now: float, limit: int) -> list[Claim]:
        """Running requests whose lease ran out before ``now`` (their worker died, froze
        or lost the network): the caller ends their attempt as lost (``requeue`` or
        ``complete`` with the attempt id)."""
        ...
    async def release_leases(self, owner_prefix: str) -> int:
        """Make the leases of workers whose id starts with ``owner_prefix`` lapse now (the
        runners of a server process that is gone)."""
        ...
    async def overdue(self, now: float, limit: int) -> list[RequestRecord]:
        """Waiting requests whose start deadline (``X-Fal-Request-Timeout``) has passed."""
        ...
    def complete(self, request_id: str, outcome: Outcome, finished_at: float,
                 webhook: WebhookTarget | None = None, *, attempt_id: str | None = None,
                 attempt_outcome: str | None = None,
                 keep_io: bool = True) -> asyncio.Future[bool]:
        """Record the outcome (and queue its webhook in the same transaction). With
        ``attempt_id``: only if it is the running attempt, which ends as
        ``attempt_outcome``; without: only if the request is still waiting. Without
        ``keep_io`` the request's input and result body are dropped (realtime frames)."""
        ...
    def requeue(self, request_id: str, attempt_id: str, finished_at: float,
                attempt_outcome: str, error_type: str | None,
                options: dict[str, Any] | None = None) -> asyncio.Future[bool]:
        """End the running attempt ``attempt_id`` and put the request back in the queue
        (with new ``options`` if given); False if that attempt is not the current one. An
        ``UNSTARTED`` attempt is forgotten: its row goes, and it is not counted."""
        ...
    def request_cancel(self, request_id: str) -> asyncio.Future[None]: ...
    def set_options(self, request_id: str, options: dict[str, Any]) -> asyncio.Future[None]:
        """Replace the request's options (saved state from its runner among them)."""
        ...
    def set_live(self, request_id: str, progress: dict[str, Any] | None,
                 partial: bytes | None) -> asyncio.Future[None]:
        """The running request's newest progress and partial result (either may be None:
        unchanged), for status readers on any gateway."""
        ...
    def add_logs(self, request_id: str, entries: list[LogEntry]) -> asyncio.Future[None]: ...
    async def get_request(self, request_id: str) -> RequestRecord | None: ...
    async def get_live(self, request_id: str) -> tuple[dict[str, Any] | None, bytes | None]: ...
    async def get_logs(self, request_id: str, offset: int = 0) -> list[LogEntry]: ...
    async def get_attempts(self, request_id: str) -> list[dict[str, Any]]: ...
    async def queue_position(self, request_id: str) -> int | None:
        """Waiting requests of the same endpoints' queue ahead of this one; None unless it
        waits."""
        ...
    async def waiting_requests(self) -> list[RequestRecord]:
        """Every waiting request, without its input (queue positions are built from them
        when one process owns the store)."""
        ...
    async def waiting(self, endpoint_ids: Sequence[str], cap: int | None = None) -> int:
        """Requests of these endpoints waiting, counted up to ``cap``."""
        ...
    async def running_for_key(self, key_id: str) -> int: ...
    async def purge_finished_before(self, timestamp: float) -> int:
        """Delete requests finished before ``timestamp`` in small transactions (writes of
        other requests go on between them); how many."""
        ...
    async def request_id_for_attempt(self, attempt_id: str) -> str | None: ...

    # Request history and metrics
    async def history(self, query: HistoryQuery) -> list[RequestRecord]:
        """Up to ``query.limit`` requests, newest first (``created_at``, then ``id``,
        descending: a stable order to page through with ``query.before``)."""
        ...
    def drop_payloads(self, request_id: str) -> asyncio.Future[bytes | None]:
        """Drop a finished request's stored input and result body (the rest of its row
        stays); the result body it had: None if it had none any more, or the request is
        unfinished or unknown (then nothing changes)."""
        ...
    async def unfinished_counts(self) -> dict[tuple[str, Status], int]:
        """Requests waiting and running, by endpoint id and status."""
        ...
    async def webhook_backlog(self) -> dict[str, int]:
        """Webhooks not yet delivered nor given up on, by state (pending, delivering)."""
        ...

    # API keys and usage
    def add_key(self, key: KeyRecord) -> asyncio.Future[None]: ...
    def revoke_key(self, key_id: str, revoked_at: float) -> asyncio.Future[None]: ...
    def set_key_concurrency(self, key_id: str, limit: int | None) -> asyncio.Future[None]: ...
    async def list_keys(self) -> list[KeyRecord]: ...
    async def usage(self, since: float, until: float) -> list[UsageRow]: ...

    # Secrets shared by every gateway: the server's (signing keys) and the apps'
    async def get_secret(self, name: str) -> bytes | None: ...
    async def put_secret_once(self, name: str, value: bytes) -> bytes:
        """Store ``value`` under ``name`` unless one is there; the stored value."""
        ...
    async def replace_secret(self, name: str, expected: bytes, value: bytes) -> bool:
        """Store ``value`` under ``name`` if ``expected`` is what is there now."""
        ...
    async def set_secret(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name``, replacing what is there."""
        ...
    async def delete_secret(self, name: str) -> bool:
        """Remove ``name``; False if there was nothing under it."""
        ...
    async def list_secrets(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every ``(name, value)`` whose name starts with ``prefix``, by name."""
        ...

    # Deployed apps (`openfal deploy`): each revision's code is a bundle (a tar.gz) kept here,
    # so that any gateway or worker can fetch the revision it is asked to run
    async def add_app_revision(self, app_id: str, ref: str, bundle: bytes,
                               created_at: float) -> AppRevision:
        """Store a new revision of the app, numbered one past the highest it has had (1 for
        an app not deployed), and make it current, atomically: of two deploys at once,
        each gets its own number and the later one is current."""
        ...
    async def app_revisions(self, app_id: str) -> list[AppRevision]:
        """The app's revisions, oldest first; [] for an app not deployed."""
        ...
    async def current_app_revisions(self) -> dict[str, AppRevision]:
        """Every deployed app's current revision, by app id (polled often: no bundle is
        read)."""
        ...
    async def set_current_app_revision(self, app_id: str,
                                       revision: int) -> AppRevision | None:
        """Make an existing revision current (a rollback, or forward again); None, and
        nothing changed, if the app or that revision does not exist."""
        ...
    async def app_bundle(self, app_id: str, revision: int) -> bytes | None: ...
    async def delete_app(self, app_id: str) -> bool:
        """Remove the app and every revision of it (a later deploy starts again at 1);
        False if it was not deployed."""
        ...

    # The webhook outbox (rows are added by ``complete``)
    async def claim_due_webhooks(self, now: float, limit: int,
                                 lease_seconds: float) -> list[WebhookRecord]:
        """Take up to ``limit`` webhooks that are due, or whose delivery lease lapsed (the
        gateway delivering them died): each is ``delivering`` with a new attempt started
        ``now``, leased until ``now + lease_seconds``."""
        ...
    async def release_webhook_leases(self) -> int:
        """The one process owning the store starts: deliveries the last one had under way
        were cut short; they are due again now, that attempt not held against them."""
        ...
    def end_webhook_attempt(self, request_id: str, attempt: WebhookAttempt, state: str,
                            next_attempt_at: float | None) -> asyncio.Future[None]: ...
    async def redeliver_webhook(self, request_id: str, now: float) -> bool: ...
    async def next_webhook_due(self) -> float | None: ...
    async def get_webhook(self, request_id: str) -> WebhookRecord | None: ...
    async def get_webhook_attempts(self, request_id: str) -> list[WebhookAttempt]: ...
