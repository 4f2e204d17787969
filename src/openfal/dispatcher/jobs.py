"""A request as a gateway watches it: one it accepted, or one whose status it streams.

The store holds the truth; a ``Job`` is this gateway's view, kept in step by what its
dispatcher does and by the store's events, so that callers waiting here (status streams,
direct runs) are woken at each change.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from openfal.app.encoding import Encoding
from openfal.store.base import LogEntry, Mode, Outcome, RequestRecord, Status

MAX_ATTEMPTS = 10
MAX_LOGS_IN_MEMORY = 2000  # log lines a watched request keeps here; the store keeps all
MAX_PARTIALS_WAITING = 256  # partial results a slow stream reader may fall behind by


class Priority(enum.IntEnum):
    DIRECT = 0
    NORMAL = 1
    LOW = 2


def may_retry(record: RequestRecord) -> bool:
    """Whether a failed attempt of this request is tried again: queued requests are,
    within their budget and start deadline, unless the caller said not to or cancelled."""
    deadline = record.options.get("start_deadline")
    counted = record.attempts - record.options.get("handed_back", 0)
    return (record.mode is Mode.QUEUE and not record.options.get("no_retry")
            and not record.cancel_requested and counted < MAX_ATTEMPTS
            and (deadline is None or time.time() < deadline))


@dataclass(eq=False)
class Job:
    id: str
    app_id: str  # "owner/name", as in its URLs
    endpoint_id: str
    path: str
    mode: Mode
    payload: bytes
    headers: dict[str, str]
    priority: Priority
    created_at: float
    options: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None  # the API key that made it; None: anonymous
    attempts: int = 0
    started_at: float | None = None  # when its first attempt started
    attempt_started_at: float | None = None  # when its current attempt started
    status: Status = Status.IN_QUEUE
    logs: list[LogEntry] = field(default_factory=list)
    logs_dropped: int = 0  # the oldest lines, no longer kept here (MAX_LOGS_IN_MEMORY)
    progress: dict[str, Any] | None = None
    # The newest partial result, and every partial in order for a caller streaming them.
    latest_partial: bytes | None = None
    partials: asyncio.Queue[bytes] | None = None
    cancel_requested: bool = False
    # Counted among its key's direct runs waiting for a runner (Dispatcher.start_direct).
    counted_waiting: bool = False
    # A direct run waiting on a claim under way, not in the store yet: that claim's list.
    pending_on: list[Job] | None = None
    finished: bool = False
    done: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # When this view last changed or was checked against the store (monotonic seconds).
    seen_at: float = field(default_factory=time.monotonic)
    refreshing: asyncio.Task | None = None  # a read from the store under way
    refresh_again: bool = False  # something changed during that read: read once more

    @property
    def encoding(self) -> Encoding:
        """"msgpack" for realtime messages; results then come back msgpack-encoded too."""
        return self.options.get("encoding", "json")

    @property
    def key_limit(self) -> int | None:
        """Running requests the submitting key may have at once."""
        return self.options.get("key_limit")

    def stream_partials(self) -> asyncio.Queue[bytes]:
        """Have every partial result kept in order for a caller streaming them."""
        self.options["stream"] = True
        self.partials = asyncio.Queue(MAX_PARTIALS_WAITING)
        return self.partials

    def add_logs(self, entries: list[LogEntry]) -> None:
        self.logs.extend(entries)
        excess = len(self.logs) - MAX_LOGS_IN_MEMORY
        if excess > 0:
            del self.logs[:excess]
            self.logs_dropped += excess

    def add_partial(self, body: bytes) -> None:
        self.latest_partial = body
        if self.partials is not None:
            if self.partials.full():
                self.partials.get_nowait()  # a reader this far behind wants the newest
            self.partials.put_nowait(body)

    def changed(self) -> asyncio.Event:
        """An event set at the next change of status, logs or progress."""
        return self._changed

    def notify(self) -> None:
        self.seen_at = time.monotonic()
        self._changed.set()
        self._changed = asyncio.Event()

    def to_record(self) -> RequestRecord:
        return RequestRecord(
            id=self.id, app_id=self.app_id, endpoint_id=self.endpoint_id, path=self.path,
            mode=self.mode, status=self.status, payload=self.payload,
            created_at=self.created_at, priority=int(self.priority), headers=self.headers,
            options=self.options, attempts=self.attempts, key_id=self.key_id,
            started_at=self.started_at, cancel_requested=self.cancel_requested)

    @classmethod
    def from_record(cls, record: RequestRecord) -> Job:
        return cls(id=record.id, app_id=record.app_id, endpoint_id=record.endpoint_id,
                   path=record.path, mode=record.mode, payload=record.payload,
                   headers=record.headers, priority=Priority(record.priority),
                   created_at=record.created_at, options=record.options,
                   attempts=record.attempts, key_id=record.key_id,
                   started_at=record.started_at, status=record.status,
                   cancel_requested=record.cancel_requested)
