"""A request while it is alive in the dispatcher: queued, running or being retried."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openfal.app.encoding import Encoding
from openfal.store.base import LogEntry, Mode, Outcome, RequestRecord, Status

if TYPE_CHECKING:
    from openfal.dispatcher.runners import RunnerHandle

MAX_ATTEMPTS = 10


class Priority(enum.IntEnum):
    DIRECT = 0
    NORMAL = 1
    LOW = 2


@dataclass
class Attempt:
    job: Job
    number: int
    attempt_id: str
    runner: RunnerHandle
    started_at: float
    # Set when the platform ends the attempt itself (timeout, hard cancel): why, as
    # (http status, error_type).
    failure: tuple[int, str] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Job:
    id: str
    app_id: str  # "owner/name", as in its URLs
    app_ref: str  # the class that serves it (its pool)
    endpoint_id: str
    path: str
    mode: Mode
    payload: bytes
    headers: dict[str, str]
    priority: Priority
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None  # the API key that made it; None: anonymous
    # "msgpack" for realtime messages; results then come back msgpack-encoded too.
    encoding: Encoding = "json"
    # Whether its input and result are kept in the store (realtime frames are not: only
    # the request itself is recorded, for usage).
    store_io: bool = True
    attempts: int = 0
    started_at: float | None = None  # when its first attempt started
    status: Status = Status.IN_QUEUE
    attempt: Attempt | None = None
    logs: list[LogEntry] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    # The newest partial result, and every partial in order for a caller streaming them.
    latest_partial: bytes | None = None
    partials: asyncio.Queue[bytes] | None = None
    cancel_requested: bool = False
    # Counted among its key's direct runs waiting for a runner (Dispatcher.start_direct).
    counted_waiting: bool = False
    finished: bool = False
    done: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    deadline_timer: asyncio.TimerHandle | None = None

    @property
    def start_deadline(self) -> float | None:
        return self.options.get("start_deadline")

    @property
    def no_retry(self) -> bool:
        return bool(self.options.get("no_retry"))

    @property
    def runner_hint(self) -> str | None:
        return self.options.get("runner_hint")

    @property
    def key_limit(self) -> int | None:
        """Running requests the submitting key may have at once."""
        return self.options.get("key_limit")

    @property
    def counted_attempts(self) -> int:
        """Attempts that used up a retry: those handed back at a shutdown did not."""
        return self.attempts - self.options.get("handed_back", 0)

    def may_retry(self) -> bool:
        deadline = self.start_deadline
        return (self.mode is Mode.QUEUE and not self.no_retry and not self.cancel_requested
                and self.counted_attempts < MAX_ATTEMPTS
                and (deadline is None or time.time() < deadline))

    def changed(self) -> asyncio.Event:
        """An event set at the next change of status, logs or progress."""
        return self._changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def to_record(self) -> RequestRecord:
        return RequestRecord(
            id=self.id, app_id=self.app_id, endpoint_id=self.endpoint_id, path=self.path,
            mode=self.mode, status=self.status, payload=self.payload,
            created_at=self.created_at, priority=int(self.priority), headers=self.headers,
            options=self.options, attempts=self.attempts, key_id=self.key_id,
            started_at=self.started_at)

    @classmethod
    def from_record(cls, record: RequestRecord, app_ref: str) -> Job:
        return cls(id=record.id, app_id=record.app_id, app_ref=app_ref,
                   endpoint_id=record.endpoint_id,
                   path=record.path, mode=record.mode, payload=record.payload,
                   headers=record.headers, priority=Priority(record.priority),
                   created_at=record.created_at, options=record.options,
                   attempts=record.attempts, key_id=record.key_id,
                   started_at=record.started_at)
