"""The embedded store: one SQLite file in WAL mode.

All writes go through one writer thread that commits whatever has queued up in a single
transaction (group commit), so a burst of submits costs one commit, not one each. Reads use
their own connections in a small thread pool and never wait for the writer (WAL).

With ``synchronous=NORMAL`` a commit survives a crash of any process (``kill -9``); only an
operating-system crash or power loss can lose the last transactions. ``durability="full"``
makes every commit wait for fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from openfal.errors import ConfigError
from openfal.ids import new_id
from openfal.store.base import (
    UNSTARTED,
    AppRevision,
    Claim,
    HistoryQuery,
    KeyRecord,
    LeaseReport,
    LogEntry,
    Mode,
    Outcome,
    RequestRecord,
    Status,
    UsageRow,
    WebhookAttempt,
    WebhookRecord,
    WebhookTarget,
)
from openfal.store.events import SingleProcessNotifier
from openfal.store.migrations import migrations
from openfal.store.reports import (
    UNFINISHED,
    WEBHOOK_BACKLOG,
    history_statement,
    unfinished_counts,
)

log = logging.getLogger(__name__)

MIGRATIONS = resources.files("openfal.store") / "migrations" / "sqlite"

_BATCH_LIMIT = 1024
Write = Callable[[sqlite3.Connection], None]
T = TypeVar("T")
_WEBHOOK_COLUMNS = ", ".join(f.name for f in fields(WebhookRecord))
_WEBHOOK_ATTEMPT_COLUMNS = ", ".join(f.name for f in fields(WebhookAttempt))
_APP_REVISION_COLUMNS = ", ".join(f"r.{f.name}" for f in fields(AppRevision))
_WAITING_SCAN = 64  # waiting rows a claim reads at a time while skipping keys at a limit
_PURGE_BATCH = 500  # finished requests deleted per transaction


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class _Writer(threading.Thread):
    """Applies queued writes in order, many per transaction."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop):
        super().__init__(name="openfal-store-writer", daemon=True)
        self.conn = conn
        self.loop = loop
        self.pending: queue.SimpleQueue[tuple[Write, asyncio.Future] | None] = queue.SimpleQueue()

    def submit(self, write: Write) -> asyncio.Future[None]:
        future = self.loop.create_future()
        self.pending.put((write, future))
        return future

    def run(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < _BATCH_LIMIT:
                try:
                    nxt = self.pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.pending.put(None)
                    break
                batch.append(nxt)
            outcomes = self._apply(batch)
            self.loop.call_soon_threadsafe(_resolve, outcomes)

    def _apply(self, batch: list[tuple[Write, asyncio.Future]]) -> list[tuple[asyncio.Future,
                                                                              Exception | None]]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for write, _ in batch:
                write(self.conn)
            self.conn.execute("COMMIT")
            return [(future, None) for _, future in batch]
        except Exception:
            # SQLite may have rolled back by itself (busy, disk full, I/O error).
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        # One write failed: apply them one by one so only the faulty one fails.
        outcomes: list[tuple[asyncio.Future, Exception | None]] = []
        for write, future in batch:
            try:
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    write(self.conn)
                outcomes.append((future, None))
            except Exception as exc:
                log.exception("store write failed")
                outcomes.append((future, exc))
        return outcomes

    def stop(self) -> None:
        self.pending.put(None)
        self.join()


def _resolve(outcomes: list[tuple[asyncio.Future, Exception | None]]) -> None:
    for future, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            # Nobody may await a write they did not need to wait for.
            future.add_done_callback(lambda f: f.exception())


def _record(row: sqlite3.Row) -> RequestRecord:
    return RequestRecord(
        id=row["id"], app_id=row["app_id"], endpoint_id=row["endpoint_id"], path=row["path"],
        mode=Mode(row["mode"]), status=Status(row["status"]), payload=row["payload"],
        created_at=row["created_at"], priority=row["priority"],
        headers=json.loads(row["headers"]), options=json.loads(row["options"]),
        attempts=row["attempts"], started_at=row["started_at"],
        finished_at=row["finished_at"], result_status=row["result_status"],
        result_body=row["result_body"], result_headers=json.loads(row["result_headers"] or "{}"),
        error=row["error"], error_type=row["error_type"],
        inference_time=row["inference_time"], key_id=row["key_id"],
        billable_units=row["billable_units"], attempt_id=row["attempt_id"],
        cancel_requested=bool(row["cancel_requested"]),
    )


def _add_webhook(conn: sqlite3.Connection, request_id: str, webhook: WebhookTarget,
                 now: float) -> None:
    """Queue a webhook, due now. Its ``gateway_request_id`` is the id of the request's last
    attempt, or the request's own id if it never started."""
    conn.execute(
        "INSERT OR IGNORE INTO webhooks (request_id, url, user_id, gateway_request_id, state,"
        " created_at, next_attempt_at) VALUES (?, ?, ?, COALESCE((SELECT attempt_id FROM"
        " attempts WHERE request_id=? ORDER BY attempt DESC LIMIT 1), ?), 'pending', ?, ?)",
        (request_id, webhook.url, webhook.user_id, request_id, request_id, now, now))


def _migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations the database has not had; its schema version after."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name='requests'").fetchone():
        version = 1  # made by the first release, which did not number its schema
    for number, script in migrations(MIGRATIONS):
        if number <= version:
            continue
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")
        log.info("store schema upgraded to version %d", number)
        version = number
    return version


def _start_attempt(conn: sqlite3.Connection, request_id: str, attempt: int, attempt_id: str,
                   worker_id: str, now: float, lease_until: float) -> None:
    conn.execute(
        "UPDATE requests SET status='IN_PROGRESS', attempts=?, attempt_id=?, lease_owner=?,"
        " lease_expires_at=?, started_at=COALESCE(started_at, ?) WHERE id=?",
        (attempt, attempt_id, worker_id, lease_until, now, request_id))
    conn.execute(
        "INSERT OR REPLACE INTO attempts (request_id, attempt, attempt_id, runner_id,"
        " started_at) VALUES (?,?,?,?,?)",
        (request_id, attempt, attempt_id, worker_id, now))


def _end_running_attempt(conn: sqlite3.Connection, request_id: str, attempt_id: str,
                         finished_at: float, outcome: str, error_type: str | None) -> bool:
    """End the request's running attempt if it is ``attempt_id``; False if not (stale)."""
    if conn.execute("SELECT 1 FROM requests WHERE id=? AND status='IN_PROGRESS'"
                    " AND attempt_id=?", (request_id, attempt_id)).fetchone() is None:
        return False
    conn.execute("UPDATE attempts SET finished_at=?, outcome=?, error_type=?"
                 " WHERE request_id=? AND attempt_id=?",
                 (finished_at, outcome, error_type, request_id, attempt_id))
    return True


def _forget_attempt(conn: sqlite3.Connection, request_id: str, attempt_id: str) -> None:
    """An attempt that never began (``UNSTARTED``): gone, and not counted."""
    conn.execute("DELETE FROM attempts WHERE request_id=? AND attempt_id=?",
                 (request_id, attempt_id))
    conn.execute(
        "UPDATE requests SET attempts=attempts-1, attempt_id=(SELECT attempt_id"
        " FROM attempts WHERE request_id=? ORDER BY attempt DESC LIMIT 1),"
        " started_at=CASE WHEN attempts=1 THEN NULL ELSE started_at END"
        " WHERE id=?", (request_id, request_id))


class SQLiteStore:
    """The embedded store. One process at a time (``lock``), so events stay in-process."""

    shared = False

    def __init__(self, path: Path, durability: str = "normal"):
        self.path = path
        self.synchronous = {"normal": "NORMAL", "full": "FULL"}[durability]
        self.notifier = SingleProcessNotifier()
        self._writer: _Writer | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="openfal-store-read")
        self._local = threading.local()
        self._lock_fd: int | None = None
        self._version = 0

    def lock(self) -> None:
        """Claim the database for this process. SQLite would let two servers share the
        file, and both would then serve the same requests: the second one to start is
        refused, told which process holds it. The lock dies with its process."""
        if self._lock_fd is not None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use the data dir {self.path.parent}: "
                              f"{exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"the data dir {self.path.parent} is in use by another openfal "
                              f"server ({holder}); stop it or use another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    async def open(self) -> None:
        self.lock()
        # Private from the first byte: the store holds inputs, results and secrets.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = _connect(self.path, self.synchronous)
        self._version = _migrate(conn)
        self._writer = _Writer(conn, asyncio.get_running_loop())
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer.conn.close()
            self._writer = None
        self._readers.shutdown(wait=True)
        self._unlock()

    async def schema_version(self) -> int:
        return self._version

    # Writes
    def _submit(self, write: Write) -> asyncio.Future[None]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(write)

    def _write(self, sql: str, params: tuple | list) -> asyncio.Future[None]:
        return self._submit(lambda conn: conn.execute(sql, params))

    def _write_returning(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Apply ``fn`` as a write; resolves to what it returned once committed. (After a
        failed batch a write is applied again on its own: the last application counts.)"""
        results: list[T] = []
        done = self._submit(lambda conn: results.append(fn(conn)))
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def resolve(committed: asyncio.Future[None]) -> None:
            if future.done():
                return
            if committed.exception() is not None:
                future.set_exception(committed.exception())
                future.add_done_callback(lambda f: f.exception())
            else:
                future.set_result(results[-1])
        done.add_done_callback(resolve)
        return future

    def add_request(self, record: RequestRecord,
                    claim: Claim | None = None) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO requests (id, app_id, endpoint_id, path, mode, status, priority,"
                " payload, headers, options, attempts, created_at, started_at, finished_at,"
                " result_status, result_body, result_headers, error, error_type,"
                " inference_time, key_id, billable_units, key_limit, start_deadline)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.id, record.app_id, record.endpoint_id, record.path, record.mode.value,
                 record.status.value, record.priority, record.payload,
                 json.dumps(record.headers), json.dumps(record.options), record.attempts,
                 record.created_at, record.started_at, record.finished_at,
                 record.result_status, record.result_body, json.dumps(record.result_headers),
                 record.error, record.error_type, record.inference_time, record.key_id,
                 record.billable_units, record.options.get("key_limit"),
                 record.options.get("start_deadline")))
            if claim is not None:
                _start_attempt(conn, record.id, claim.request.attempts, claim.attempt_id,
                               claim.worker_id, claim.request.started_at or record.created_at,
                               claim.lease_expires_at)
        return self._submit(write)

    async def claim(self, endpoint_ids: Sequence[str], worker_id: str, *, limit: int,
                    lease_seconds: float, now: float) -> list[Claim]:
        if limit <= 0 or not endpoint_ids:
            return []
        marks = ",".join("?" * len(endpoint_ids))
        waiting = (f"SELECT * FROM requests WHERE status='IN_QUEUE' AND endpoint_id IN ({marks})"
                   " AND (start_deadline IS NULL OR start_deadline > ?)"
                   " ORDER BY priority, created_at, rowid LIMIT ? OFFSET ?")

        def write(conn: sqlite3.Connection) -> list[Claim]:
            conn.row_factory = sqlite3.Row
            try:
                return self._claim_rows(conn, waiting, [*endpoint_ids, now], worker_id,
                                        limit, now, now + lease_seconds)
            finally:
                conn.row_factory = None
        return await self._write_returning(write)

    @staticmethod
    def _claim_rows(conn: sqlite3.Connection, waiting: str, params: list[Any], worker_id: str,
                    limit: int, now: float, lease_until: float) -> list[Claim]:
        claims: list[Claim] = []
        running: dict[str, int] = {}
        offset = 0
        while len(claims) < limit:
            rows = conn.execute(waiting, (*params, _WAITING_SCAN, offset)).fetchall()
            offset += len(rows)
            for row in rows:
                key, key_limit = row["key_id"], row["key_limit"]
                if key is not None and key_limit is not None:
                    if key not in running:
                        running[key] = conn.execute(
                            "SELECT COUNT(*) FROM requests WHERE status='IN_PROGRESS'"
                            " AND key_id=?", (key,)).fetchone()[0]
                    if running[key] >= key_limit:
                        continue
                    running[key] += 1
                record = _record(row)
                record.attempts += 1
                record.status = Status.IN_PROGRESS
                record.started_at = record.started_at or now
                attempt_id = record.attempt_id = new_id()
                _start_attempt(conn, record.id, record.attempts, attempt_id, worker_id, now,
                               lease_until)
                claims.append(Claim(record, attempt_id, lease_until, worker_id))
                offset -= 1  # claimed, it no longer waits: the next page starts one earlier
                if len(claims) == limit:
                    break
            if len(rows) < _WAITING_SCAN:
                break
        return claims

    async def renew_leases(self, worker_id: str, attempt_ids: Sequence[str],
                           until: float) -> LeaseReport:
        def write(conn: sqlite3.Connection) -> LeaseReport:
            report = LeaseReport()
            for attempt_id in attempt_ids:
                row = conn.execute(
                    "SELECT cancel_requested FROM requests WHERE attempt_id=?"
                    " AND status='IN_PROGRESS' AND lease_owner=?",
                    (attempt_id, worker_id)).fetchone()
                if row is None:
                    report.lost.append(attempt_id)
                    continue
                conn.execute("UPDATE requests SET lease_expires_at=? WHERE attempt_id=?",
                             (until, attempt_id))
                if row[0]:
                    report.cancelled.append(attempt_id)
            return report
        return await self._write_returning(write)

    async def lapsed(self, now: float, limit: int) -> list[Claim]:
        def read(conn: sqlite3.Connection) -> list[Claim]:
            rows = conn.execute(
                "SELECT * FROM requests WHERE status='IN_PROGRESS' AND lease_expires_at < ?"
                " ORDER BY lease_expires_at LIMIT ?", (now, limit)).fetchall()
            return [Claim(_record(row), row["attempt_id"], row["lease_expires_at"],
                          row["lease_owner"]) for row in rows]
        return await self._read(read)

    async def release_leases(self, owner_prefix: str) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE requests SET lease_expires_at=0 WHERE status='IN_PROGRESS'"
                " AND substr(lease_owner, 1, ?)=?",
                (len(owner_prefix), owner_prefix)).rowcount
        return await self._write_returning(write)

    async def overdue(self, now: float, limit: int) -> list[RequestRecord]:
        def read(conn: sqlite3.Connection) -> list[RequestRecord]:
            rows = conn.execute(
                "SELECT * FROM requests WHERE status='IN_QUEUE' AND start_deadline IS NOT NULL"
                " AND start_deadline <= ? LIMIT ?", (now, limit)).fetchall()
            return [_record(row) for row in rows]
        return await self._read(read)

    def complete(self, request_id: str, outcome: Outcome, finished_at: float,
                 webhook: WebhookTarget | None = None, *, attempt_id: str | None = None,
                 attempt_outcome: str | None = None,
                 keep_io: bool = True) -> asyncio.Future[bool]:
        """Record the outcome and, if the request asked for one, queue its webhook in the
        same transaction: a crash never leaves a completed request without its webhook."""
        def write(conn: sqlite3.Connection) -> bool:
            if attempt_id is None:
                fence = "status='IN_QUEUE'"
            elif _end_running_attempt(conn, request_id, attempt_id, finished_at,
                                      attempt_outcome or "ok", outcome.error_type):
                fence = "status='IN_PROGRESS'"
            else:
                return False
            if attempt_id is not None and attempt_outcome == UNSTARTED:
                _forget_attempt(conn, request_id, attempt_id)
            changed = conn.execute(
                "UPDATE requests SET status='COMPLETED', finished_at=?, result_status=?,"
                " result_body=?, result_headers=?, error=?, error_type=?, inference_time=?,"
                " billable_units=?, lease_owner=NULL, lease_expires_at=NULL,"
                " latest_partial=NULL, payload=CASE WHEN ? THEN payload ELSE x'' END"
                f" WHERE id=? AND {fence}",
                (finished_at, outcome.status, outcome.body if keep_io else None,
                 json.dumps(outcome.headers), outcome.error, outcome.error_type,
                 outcome.inference_time, outcome.billable_units, keep_io,
                 request_id)).rowcount
            if changed and webhook is not None:
                _add_webhook(conn, request_id, webhook, finished_at)
            return bool(changed)
        return self._write_returning(write)

    def requeue(self, request_id: str, attempt_id: str, finished_at: float,
                attempt_outcome: str, error_type: str | None,
                options: dict[str, Any] | None = None) -> asyncio.Future[bool]:
        def write(conn: sqlite3.Connection) -> bool:
            if not _end_running_attempt(conn, request_id, attempt_id, finished_at,
                                        attempt_outcome, error_type):
                return False
            conn.execute(
                "UPDATE requests SET status='IN_QUEUE', lease_owner=NULL,"
                " lease_expires_at=NULL, progress=NULL, latest_partial=NULL,"
                " options=COALESCE(?, options) WHERE id=?",
                (None if options is None else json.dumps(options), request_id))
            if attempt_outcome == UNSTARTED:
                _forget_attempt(conn, request_id, attempt_id)
            return True
        return self._write_returning(write)

    def request_cancel(self, request_id: str) -> asyncio.Future[None]:
        return self._write("UPDATE requests SET cancel_requested=1 WHERE id=?", (request_id,))

    def set_options(self, request_id: str, options: dict[str, Any]) -> asyncio.Future[None]:
        return self._write("UPDATE requests SET options=? WHERE id=?",
                           (json.dumps(options), request_id))

    def set_live(self, request_id: str, progress: dict[str, Any] | None,
                 partial: bytes | None) -> asyncio.Future[None]:
        return self._write(
            "UPDATE requests SET progress=COALESCE(?, progress),"
            " latest_partial=COALESCE(?, latest_partial) WHERE id=? AND status='IN_PROGRESS'",
            (None if progress is None else json.dumps(progress), partial, request_id))

    def add_logs(self, request_id: str, entries: list[LogEntry]) -> asyncio.Future[None]:
        rows = [(request_id, e.timestamp, e.level, e.source, e.message) for e in entries]
        return self._submit(lambda conn: conn.executemany(
            "INSERT INTO logs (request_id, timestamp, level, source, message)"
            " VALUES (?,?,?,?,?)", rows))

    # Reads
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.synchronous)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    async def _scalar(self, sql: str, params: tuple | list) -> Any:
        def read(conn: sqlite3.Connection) -> Any:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None
        return await self._read(read)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        def read(conn: sqlite3.Connection) -> RequestRecord | None:
            row = conn.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
            return _record(row) if row else None
        return await self._read(read)

    async def get_live(self, request_id: str) -> tuple[dict[str, Any] | None, bytes | None]:
        def read(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, bytes | None]:
            row = conn.execute("SELECT progress, latest_partial FROM requests WHERE id=?",
                               (request_id,)).fetchone()
            if row is None:
                return None, None
            return (json.loads(row[0]) if row[0] else None), row[1]
        return await self._read(read)

    async def get_logs(self, request_id: str, offset: int = 0) -> list[LogEntry]:
        def read(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                "SELECT message, level, source, timestamp FROM logs WHERE request_id=?"
                " ORDER BY rowid LIMIT -1 OFFSET ?", (request_id, offset)).fetchall()
            return [LogEntry(r["message"], r["level"], r["source"], r["timestamp"])
                    for r in rows]
        return await self._read(read)

    async def get_attempts(self, request_id: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute("SELECT * FROM attempts WHERE request_id=? ORDER BY attempt",
                                (request_id,)).fetchall()
            return [dict(r) for r in rows]
        return await self._read(read)

    async def queue_position(self, request_id: str) -> int | None:
        return await self._scalar(
            "SELECT (SELECT COUNT(*) FROM requests o WHERE o.status='IN_QUEUE'"
            " AND o.app_id=r.app_id AND (o.priority < r.priority OR (o.priority=r.priority"
            " AND (o.created_at < r.created_at OR (o.created_at=r.created_at"
            " AND o.rowid < r.rowid))))) FROM requests r WHERE r.id=? AND r.status='IN_QUEUE'",
            (request_id,))

    async def waiting_requests(self) -> list[RequestRecord]:
        def read(conn: sqlite3.Connection) -> list[RequestRecord]:
            rows = conn.execute("SELECT * FROM requests WHERE status='IN_QUEUE'").fetchall()
            records = [_record(row) for row in rows]
            for record in records:
                record.payload = b""
            return records
        return await self._read(read)

    async def waiting(self, endpoint_ids: Sequence[str], cap: int | None = None) -> int:
        marks = ",".join("?" * len(endpoint_ids))
        return await self._scalar(
            "SELECT COUNT(*) FROM (SELECT 1 FROM requests WHERE status='IN_QUEUE'"
            f" AND endpoint_id IN ({marks}) LIMIT ?)", [*endpoint_ids, cap or -1]) or 0

    async def running_for_key(self, key_id: str) -> int:
        return await self._scalar("SELECT COUNT(*) FROM requests WHERE status='IN_PROGRESS'"
                                  " AND key_id=?", (key_id,)) or 0

    async def request_id_for_attempt(self, attempt_id: str) -> str | None:
        return await self._scalar("SELECT request_id FROM attempts WHERE attempt_id=?",
                                  (attempt_id,))

    # Request history and metrics
    async def history(self, query: HistoryQuery) -> list[RequestRecord]:
        sql, params = history_statement(query, lambda number: f"?{number}")

        def read(conn: sqlite3.Connection) -> list[RequestRecord]:
            return [_record(row) for row in conn.execute(sql, params).fetchall()]
        return await self._read(read)

    def drop_payloads(self, request_id: str) -> asyncio.Future[bytes | None]:
        def write(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT result_body FROM requests WHERE id=?"
                               " AND status='COMPLETED'", (request_id,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE requests SET payload=x'', result_body=NULL WHERE id=?",
                         (request_id,))
            return row[0]
        return self._write_returning(write)

    async def unfinished_counts(self) -> dict[tuple[str, Status], int]:
        return await self._read(lambda conn: unfinished_counts(conn.execute(UNFINISHED)))

    async def webhook_backlog(self) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute(WEBHOOK_BACKLOG).fetchall())
        return await self._read(read)

    # API keys
    def add_key(self, key: KeyRecord) -> asyncio.Future[None]:
        return self._write(
            "INSERT INTO api_keys (id, secret_hash, scope, name, created_at, max_concurrency)"
            " VALUES (?,?,?,?,?,?)",
            (key.id, key.secret_hash, key.scope, key.name, key.created_at,
             key.max_concurrency))

    def revoke_key(self, key_id: str, revoked_at: float) -> asyncio.Future[None]:
        return self._write("UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                           (revoked_at, key_id))

    def set_key_concurrency(self, key_id: str, limit: int | None) -> asyncio.Future[None]:
        return self._write("UPDATE api_keys SET max_concurrency=? WHERE id=?", (limit, key_id))

    async def list_keys(self) -> list[KeyRecord]:
        def read(conn: sqlite3.Connection) -> list[KeyRecord]:
            rows = conn.execute("SELECT * FROM api_keys ORDER BY created_at").fetchall()
            return [KeyRecord(**dict(row)) for row in rows]
        return await self._read(read)

    # Usage
    async def usage(self, since: float, until: float) -> list[UsageRow]:
        def read(conn: sqlite3.Connection) -> list[UsageRow]:
            rows = conn.execute(
                "SELECT key_id, endpoint_id, COUNT(*) AS requests,"
                " SUM(result_status >= 400) AS failed,"
                " SUM(COALESCE(started_at - created_at, 0)) AS queue_seconds,"
                " SUM(COALESCE(finished_at - started_at, 0)) AS run_seconds,"
                " SUM(attempts) AS attempts, SUM(COALESCE(billable_units, 0)) AS billable_units"
                " FROM requests WHERE status='COMPLETED' AND finished_at >= ? AND finished_at < ?"
                " GROUP BY key_id, endpoint_id ORDER BY key_id, endpoint_id",
                (since, until)).fetchall()
            return [UsageRow(**dict(row)) for row in rows]
        return await self._read(read)

    async def purge_finished_before(self, timestamp: float) -> int:
        def write(conn: sqlite3.Connection) -> int:
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM requests WHERE status='COMPLETED' AND finished_at < ? LIMIT ?",
                (timestamp, _PURGE_BATCH))]
            marks = ",".join("?" * len(ids))
            for table, column in (("logs", "request_id"), ("attempts", "request_id"),
                                  ("webhook_attempts", "request_id"),
                                  ("webhooks", "request_id"), ("requests", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
            return len(ids)
        removed = 0
        while (batch := await self._write_returning(write)) > 0:
            removed += batch  # each batch is its own transaction: submits go on between
            if batch < _PURGE_BATCH:
                break
        return removed

    # Secrets shared by the gateways of this store
    async def get_secret(self, name: str) -> bytes | None:
        return await self._scalar("SELECT value FROM secrets WHERE name=?", (name,))

    async def put_secret_once(self, name: str, value: bytes) -> bytes:
        def write(conn: sqlite3.Connection) -> bytes:
            conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                         (name, value))
            return conn.execute("SELECT value FROM secrets WHERE name=?", (name,)).fetchone()[0]
        return await self._write_returning(write)

    async def replace_secret(self, name: str, expected: bytes, value: bytes) -> bool:
        return await self._write_returning(lambda conn: conn.execute(
            "UPDATE secrets SET value=? WHERE name=? AND value=?",
            (value, name, expected)).rowcount == 1)

    async def set_secret(self, name: str, value: bytes) -> None:
        await self._write("INSERT INTO secrets (name, value) VALUES (?, ?)"
                          " ON CONFLICT (name) DO UPDATE SET value=excluded.value", (name, value))

    async def delete_secret(self, name: str) -> bool:
        return await self._write_returning(lambda conn: conn.execute(
            "DELETE FROM secrets WHERE name=?", (name,)).rowcount == 1)

    async def list_secrets(self, prefix: str) -> list[tuple[str, bytes]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            rows = conn.execute("SELECT name, value FROM secrets"
                                " WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
                                (prefix,))
            return [(name, value) for name, value in rows]
        return await self._read(read)

    # Deployed apps
    async def add_app_revision(self, app_id: str, ref: str, bundle: bytes,
                               created_at: float) -> AppRevision:
        digest = hashlib.sha256(bundle).hexdigest()

        def write(conn: sqlite3.Connection) -> AppRevision:
            conn.execute(
                "INSERT INTO deployed_apps (app_id, current_revision, latest_revision)"
                " VALUES (?, 1, 1) ON CONFLICT (app_id) DO UPDATE SET"
                " current_revision=latest_revision+1, latest_revision=latest_revision+1",
                (app_id,))
            revision = conn.execute("SELECT latest_revision FROM deployed_apps WHERE app_id=?",
                                    (app_id,)).fetchone()[0]
            conn.execute(
                "INSERT INTO app_revisions (app_id, revision, ref, digest, size, created_at,"
                " bundle) VALUES (?,?,?,?,?,?,?)",
                (app_id, revision, ref, digest, len(bundle), created_at, bundle))
            return AppRevision(app_id, revision, ref, digest, len(bundle), created_at)
        return await self._write_returning(write)

    async def app_revisions(self, app_id: str) -> list[AppRevision]:
        def read(conn: sqlite3.Connection) -> list[AppRevision]:
            rows = conn.execute(f"SELECT {_APP_REVISION_COLUMNS} FROM app_revisions r"
                                " WHERE app_id=? ORDER BY revision", (app_id,)).fetchall()
            return [AppRevision(*row) for row in rows]
        return await self._read(read)

    async def current_app_revisions(self) -> dict[str, AppRevision]:
        def read(conn: sqlite3.Connection) -> dict[str, AppRevision]:
            rows = conn.execute(
                f"SELECT {_APP_REVISION_COLUMNS} FROM deployed_apps d JOIN app_revisions r"
                " ON r.app_id=d.app_id AND r.revision=d.current_revision").fetchall()
            return {row["app_id"]: AppRevision(*row) for row in rows}
        return await self._read(read)

    async def set_current_app_revision(self, app_id: str,
                                       revision: int) -> AppRevision | None:
        def write(conn: sqlite3.Connection) -> AppRevision | None:
            row = conn.execute(f"SELECT {_APP_REVISION_COLUMNS} FROM app_revisions r"
                               " WHERE app_id=? AND revision=?", (app_id, revision)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE deployed_apps SET current_revision=? WHERE app_id=?",
                         (revision, app_id))
            return AppRevision(*row)
        return await self._write_returning(write)

    async def app_bundle(self, app_id: str, revision: int) -> bytes | None:
        return await self._scalar("SELECT bundle FROM app_revisions WHERE app_id=?"
                                  " AND revision=?", (app_id, revision))

    async def delete_app(self, app_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM app_revisions WHERE app_id=?", (app_id,))
            return conn.execute("DELETE FROM deployed_apps WHERE app_id=?",
                                (app_id,)).rowcount == 1
        return await self._write_returning(write)

    # Webhook outbox
    async def claim_due_webhooks(self, now: float, limit: int,
                                 lease_seconds: float) -> list[WebhookRecord]:
        def write(conn: sqlite3.Connection) -> list[WebhookRecord]:
            rows = conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE (state='pending'"
                " AND next_attempt_at <= ?) OR (state='delivering' AND lease_expires_at < ?)"
                " ORDER BY next_attempt_at LIMIT ?", (now, now, limit)).fetchall()
            claimed = [WebhookRecord(*row) for row in rows]
            for record in claimed:
                if record.state == "delivering":
                    # Its gateway died mid-attempt: that attempt is not held against it.
                    conn.execute("UPDATE webhook_attempts SET finished_at=?, error=?"
                                 " WHERE request_id=? AND attempt=? AND finished_at IS NULL",
                                 (now, "interrupted: the delivering server stopped",
                                  record.request_id, record.attempts))
                    record.tries -= 1
                record.state, record.next_attempt_at = "delivering", None
                record.attempts += 1
                record.tries += 1
                conn.execute(
                    "UPDATE webhooks SET state='delivering', attempts=?, tries=?,"
                    " next_attempt_at=NULL, lease_expires_at=? WHERE request_id=?",
                    (record.attempts, record.tries, now + lease_seconds, record.request_id))
                conn.execute(
                    "INSERT INTO webhook_attempts (request_id, attempt, started_at)"
                    " VALUES (?,?,?)", (record.request_id, record.attempts, now))
            return claimed
        return await self._write_returning(write)

    async def release_webhook_leases(self) -> int:
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute("UPDATE webhooks SET lease_expires_at=0"
                                " WHERE state='delivering'").rowcount
        return await self._write_returning(write)

    def end_webhook_attempt(self, request_id: str, attempt: WebhookAttempt, state: str,
                            next_attempt_at: float | None) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_attempts SET finished_at=?, status_code=?, error=?, duration=?"
                " WHERE request_id=? AND attempt=?",
                (attempt.finished_at, attempt.status_code, attempt.error, attempt.duration,
                 request_id, attempt.attempt))
            conn.execute(
                "UPDATE webhooks SET state=?, next_attempt_at=?, lease_expires_at=NULL,"
                " delivered_at=CASE WHEN ?='delivered' THEN ? ELSE delivered_at END"
                " WHERE request_id=? AND attempts=?",
                (state, next_attempt_at, state, attempt.finished_at, request_id,
                 attempt.attempt))
        return self._submit(write)

    async def redeliver_webhook(self, request_id: str, now: float) -> bool:
        """Make a webhook due now with a fresh set of tries; False while an attempt of it
        is under way."""
        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE webhooks SET state='pending', tries=0, next_attempt_at=?"
                " WHERE request_id=? AND state != 'delivering'", (now, request_id)).rowcount == 1
        return await self._write_returning(write)

    async def next_webhook_due(self) -> float | None:
        return await self._scalar(
            "SELECT MIN(COALESCE(next_attempt_at, lease_expires_at)) FROM webhooks"
            " WHERE state IN ('pending', 'delivering')", ())

    async def get_webhook(self, request_id: str) -> WebhookRecord | None:
        def read(conn: sqlite3.Connection) -> WebhookRecord | None:
            row = conn.execute(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE request_id=?",
                               (request_id,)).fetchone()
            return WebhookRecord(*row) if row else None
        return await self._read(read)

    async def get_webhook_attempts(self, request_id: str) -> list[WebhookAttempt]:
        def read(conn: sqlite3.Connection) -> list[WebhookAttempt]:
            rows = conn.execute(
                f"SELECT {_WEBHOOK_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE request_id=?"
                " ORDER BY attempt", (request_id,)).fetchall()
            return [WebhookAttempt(*row) for row in rows]
        return await self._read(read)
