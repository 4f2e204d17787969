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
    def add_logs(self, request_id: str, entries: list[LogEntry]) -> asyncio.Future[None]: ...
    def complete(self, request_id: str, outcome: Outcome,
                 finished_at: float) -> asyncio.Future[None]: ...
    async def get_request(self, request_id: str) -> RequestRecord | None: ...
    async def get_logs(self, request_id: str) -> list[LogEntry]: ...
    async def get_attempts(self, request_id: str) -> list[dict[str, Any]]: ...
    async def unfinished(self) -> list[RequestRecord]: ...
    async def purge_finished_before(self, timestamp: float) -> int: ...
