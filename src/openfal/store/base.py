"""What the platform keeps durably, independent of the database that keeps it."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


class Status(enum.StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Mode(enum.StrEnum):
    QUEUE = "queue"
    DIRECT = "direct"


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
class LogEntry:
    message: str
    level: str
    source: str
    timestamp: float

    def to_wire(self) -> dict[str, Any]:
        return {"message": self.message, "level": self.level, "source": self.source,
                "timestamp": datetime.fromtimestamp(self.timestamp, UTC).isoformat()}


class Store(Protocol):
    """The durable state of requests.

    Writes are applied in the order they are made and return a future that resolves once
    the change is committed: await it where durability matters before answering a caller
    (a new request, a result), drop it where a crash may lose the change harmlessly (an
    attempt's start, log lines).
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def add_request(self, record: RequestRecord) -> asyncio.Future[None]: ...
    def start_attempt(self, request_id: str, attempt: int, attempt_id: str,
                      runner_id: str, started_at: float) -> asyncio.Future[None]: ...
    def end_attempt(self, request_id: str, attempt: int, finished_at: float,
                    outcome: str, error_type: str | None) -> asyncio.Future[None]: ...
    def requeue(self, request_id: str) -> asyncio.Future[None]: ...
    def set_options(self, request_id: str, options: dict[str, Any]) -> asyncio.Future[None]:
        """Replace the request's options (saved state from its runner among them)."""
        ...
    def hand_back(self, request_id: str, attempt: int, finished_at: float,
                  options: dict[str, Any]) -> asyncio.Future[None]:
        """The server stopped before the attempt ended: back to the queue, the attempt
        marked ``interrupted``; ``options`` records that it used up no retry."""
        ...
    def add_logs(self, request_id: str, entries: list[LogEntry]) -> asyncio.Future[None]: ...
    def complete(self, request_id: str, outcome: Outcome, finished_at: float,
                 webhook: WebhookTarget | None = None) -> asyncio.Future[None]: ...
    async def get_request(self, request_id: str) -> RequestRecord | None: ...
    async def get_logs(self, request_id: str) -> list[LogEntry]: ...
    async def get_attempts(self, request_id: str) -> list[dict[str, Any]]: ...
    async def unfinished(self) -> list[RequestRecord]: ...
    async def purge_finished_before(self, timestamp: float) -> int: ...
    async def request_id_for_attempt(self, attempt_id: str) -> str | None: ...
    def add_key(self, key: KeyRecord) -> asyncio.Future[None]: ...
    def revoke_key(self, key_id: str, revoked_at: float) -> asyncio.Future[None]: ...
    def set_key_concurrency(self, key_id: str, limit: int | None) -> asyncio.Future[None]: ...
    async def list_keys(self) -> list[KeyRecord]: ...
    async def usage(self, since: float, until: float) -> list[UsageRow]: ...
    # The webhook outbox (rows are added by ``complete``)
    async def claim_due_webhooks(self, now: float, limit: int) -> list[WebhookRecord]: ...
    def end_webhook_attempt(self, request_id: str, attempt: WebhookAttempt, state: str,
                            next_attempt_at: float | None) -> asyncio.Future[None]: ...
    async def redeliver_webhook(self, request_id: str, now: float) -> bool: ...
    async def recover_webhooks(self, now: float) -> int: ...
    async def next_webhook_due(self) -> float | None: ...
    async def get_webhook(self, request_id: str) -> WebhookRecord | None: ...
    async def get_webhook_attempts(self, request_id: str) -> list[WebhookAttempt]: ...
