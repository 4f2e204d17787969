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
import json
import logging
import os
import queue
import socket
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from openfal.errors import ConfigError
from openfal.store.base import (
    KeyRecord,
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

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    path TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result_status INTEGER,
    result_body BLOB,
    result_headers TEXT,
    error TEXT,
    error_type TEXT,
    inference_time REAL,
    key_id TEXT,
    billable_units REAL
);
CREATE INDEX IF NOT EXISTS requests_unfinished ON requests (created_at)
    WHERE status != 'COMPLETED';
CREATE INDEX IF NOT EXISTS requests_finished_at ON requests (finished_at);
CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    attempt_id TEXT NOT NULL,
    runner_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    outcome TEXT,
    error_type TEXT,
    PRIMARY KEY (request_id, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_id ON attempts (attempt_id);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL,
    max_concurrency INTEGER
);
CREATE TABLE IF NOT EXISTS logs (
    request_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    level TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_request ON logs (request_id);
CREATE TABLE IF NOT EXISTS webhooks (
    request_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    user_id TEXT NOT NULL,
    gateway_request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (next_attempt_at) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS webhook_attempts (
    request_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status_code INTEGER,
    error TEXT,
    duration REAL,
    PRIMARY KEY (request_id, attempt)
);
"""

_BATCH_LIMIT = 1024
Write = Callable[[sqlite3.Connection], None]
T = TypeVar("T")
_WEBHOOK_COLUMNS = ", ".join(f.name for f in fields(WebhookRecord))
_WEBHOOK_ATTEMPT_COLUMNS = ", ".join(f.name for f in fields(WebhookAttempt))
_INTERRUPTED = "interrupted: the server stopped during the attempt"


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
        billable_units=row["billable_units"],
    )


def _add_webhook(conn: sqlite3.Connection, request_id: str, webhook: WebhookTarget,
                 now: float) -> None:
    """Queue a webhook, due now. Its ``gateway_request_id`` is the id of the request's last
    attempt (all earlier writes are applied before this one), or the request's own id if it
    never started."""
    conn.execute(
        "INSERT OR IGNORE INTO webhooks (request_id, url, user_id, gateway_request_id, state,"
        " created_at, next_attempt_at) VALUES (?, ?, ?, COALESCE((SELECT attempt_id FROM"
        " attempts WHERE request_id=? ORDER BY attempt DESC LIMIT 1), ?), 'pending', ?, ?)",
        (request_id, webhook.url, webhook.user_id, request_id, request_id, now, now))


class SQLiteStore:
    def __init__(self, path: Path, durability: str = "normal"):
        self.path = path
        self.synchronous = {"normal": "NORMAL", "full": "FULL"}[durability]
        self._writer: _Writer | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="openfal-store-read")
        self._local = threading.local()
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Claim the database for this process. SQLite would let two servers share the
        file, and both would then run the same unfinished requests: the second one to
        start is refused, told which process holds it. The lock dies with its process."""
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
        conn = _connect(self.path, self.synchronous)
        conn.executescript(SCHEMA)
        self._writer = _Writer(conn, asyncio.get_running_loop())
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.to_thread(self._writer.stop)
            self._writer.conn.close()
            self._writer = None
        self._readers.shutdown(wait=True)
        self._unlock()

    # Writes
    def _write(self, sql: str, params: tuple | list) -> asyncio.Future[None]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(lambda conn: conn.execute(sql, params))

    def add_request(self, record: RequestRecord) -> asyncio.Future[None]:
        return self._write(
            "INSERT INTO requests (id, app_id, endpoint_id, path, mode, status, priority,"
            " payload, headers, options, attempts, created_at, started_at, finished_at,"
            " result_status, result_body, result_headers, error, error_type, inference_time,"
            " key_id, billable_units) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (record.id, record.app_id, record.endpoint_id, record.path, record.mode.value,
             record.status.value, record.priority, record.payload,
             json.dumps(record.headers), json.dumps(record.options), record.attempts,
             record.created_at, record.started_at, record.finished_at, record.result_status,
             record.result_body, json.dumps(record.result_headers), record.error,
             record.error_type, record.inference_time, record.key_id, record.billable_units))

    def start_attempt(self, request_id: str, attempt: int, attempt_id: str,
                      runner_id: str, started_at: float) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE requests SET status='IN_PROGRESS', attempts=?,"
                " started_at=COALESCE(started_at, ?) WHERE id=?",
                (attempt, started_at, request_id))
            conn.execute(
                "INSERT OR REPLACE INTO attempts (request_id, attempt, attempt_id, runner_id,"
                " started_at) VALUES (?,?,?,?,?)",
                (request_id, attempt, attempt_id, runner_id, started_at))
        assert self._writer is not None
        return self._writer.submit(write)

    def end_attempt(self, request_id: str, attempt: int, finished_at: float,
                    outcome: str, error_type: str | None) -> asyncio.Future[None]:
        return self._write(
            "UPDATE attempts SET finished_at=?, outcome=?, error_type=?"
            " WHERE request_id=? AND attempt=?",
            (finished_at, outcome, error_type, request_id, attempt))

    def requeue(self, request_id: str) -> asyncio.Future[None]:
        return self._write("UPDATE requests SET status='IN_QUEUE' WHERE id=?", (request_id,))

    def set_options(self, request_id: str, options: dict[str, Any]) -> asyncio.Future[None]:
        return self._write("UPDATE requests SET options=? WHERE id=?",
                           (json.dumps(options), request_id))

    def hand_back(self, request_id: str, attempt: int, finished_at: float,
                  options: dict[str, Any]) -> asyncio.Future[None]:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE attempts SET finished_at=?, outcome='interrupted',"
                " error_type='server_shutdown' WHERE request_id=? AND attempt=?",
                (finished_at, request_id, attempt))
            conn.execute("UPDATE requests SET status='IN_QUEUE', options=? WHERE id=?",
                         (json.dumps(options), request_id))
        assert self._writer is not None
        return self._writer.submit(write)

    def add_logs(self, request_id: str, entries: list[LogEntry]) -> asyncio.Future[None]:
        rows = [(request_id, e.timestamp, e.level, e.source, e.message) for e in entries]
        assert self._writer is not None
        return self._writer.submit(lambda conn: conn.executemany(
            "INSERT INTO logs (request_id, timestamp, level, source, message)"
            " VALUES (?,?,?,?,?)", rows))

    def complete(self, request_id: str, outcome: Outcome, finished_at: float,
                 webhook: WebhookTarget | None = None) -> asyncio.Future[None]:
        """Record the outcome and, if the request asked for one, queue its webhook in the
        same transaction: a crash never leaves a completed request without its webhook."""
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE requests SET status='COMPLETED', finished_at=?, result_status=?,"
                " result_body=?, result_headers=?, error=?, error_type=?, inference_time=?,"
                " billable_units=? WHERE id=?",
                (finished_at, outcome.status, outcome.body, json.dumps(outcome.headers),
                 outcome.error, outcome.error_type,
                 outcome.inference_time, outcome.billable_units, request_id))
            if webhook is not None:
                _add_webhook(conn, request_id, webhook, finished_at)
        assert self._writer is not None
        return self._writer.submit(write)

    # Reads
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.synchronous)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    async def get_request(self, request_id: str) -> RequestRecord | None:
        def read(conn: sqlite3.Connection) -> RequestRecord | None:
            row = conn.execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
            return _record(row) if row else None
        return await self._read(read)

    async def get_logs(self, request_id: str) -> list[LogEntry]:
        def read(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                "SELECT message, level, source, timestamp FROM logs WHERE request_id=?"
                " ORDER BY rowid", (request_id,)).fetchall()
            return [LogEntry(r["message"], r["level"], r["source"], r["timestamp"])
                    for r in rows]
        return await self._read(read)

    async def get_attempts(self, request_id: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute("SELECT * FROM attempts WHERE request_id=? ORDER BY attempt",
                                (request_id,)).fetchall()
            return [dict(r) for r in rows]
        return await self._read(read)

    async def unfinished(self) -> list[RequestRecord]:
        def read(conn: sqlite3.Connection) -> list[RequestRecord]:
            rows = conn.execute("SELECT * FROM requests WHERE status != 'COMPLETED'"
                                " ORDER BY created_at").fetchall()
            return [_record(r) for r in rows]
        return await self._read(read)

    async def request_id_for_attempt(self, attempt_id: str) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT request_id FROM attempts WHERE attempt_id=?",
                               (attempt_id,)).fetchone()
            return row["request_id"] if row else None
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
        def write(conn: sqlite3.Connection) -> None:
            ids = "SELECT id FROM requests WHERE status='COMPLETED' AND finished_at < ?"
            conn.execute(f"DELETE FROM logs WHERE request_id IN ({ids})", (timestamp,))
            conn.execute(f"DELETE FROM attempts WHERE request_id IN ({ids})", (timestamp,))
            conn.execute(f"DELETE FROM webhook_attempts WHERE request_id IN ({ids})",
                         (timestamp,))
            conn.execute(f"DELETE FROM webhooks WHERE request_id IN ({ids})", (timestamp,))
            removed.append(conn.execute(
                "DELETE FROM requests WHERE status='COMPLETED' AND finished_at < ?",
                (timestamp,)).rowcount)
        removed: list[int] = []
        assert self._writer is not None
        await self._writer.submit(write)
        return removed[0]

    # Webhook outbox
    async def _write_returning(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Apply ``fn`` as a write; what it returned once committed. (After a failed batch
        a write is applied again on its own: the last application is the committed one.)"""
        results: list[T] = []
        assert self._writer is not None
        await self._writer.submit(lambda conn: results.append(fn(conn)))
        return results[-1]

    async def claim_due_webhooks(self, now: float, limit: int) -> list[WebhookRecord]:
        """Mark up to ``limit`` due webhooks as delivering, each with a new attempt started
        ``now``; they are not due again until that attempt ends (or the server restarts)."""
        def write(conn: sqlite3.Connection) -> list[WebhookRecord]:
            rows = conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE state='pending'"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, limit)).fetchall()
            claimed = [WebhookRecord(*row) for row in rows]
            for record in claimed:
                record.state, record.next_attempt_at = "delivering", None
                record.attempts += 1
                record.tries += 1
                conn.execute(
                    "UPDATE webhooks SET state='delivering', attempts=?, tries=?,"
                    " next_attempt_at=NULL WHERE request_id=?",
                    (record.attempts, record.tries, record.request_id))
                conn.execute(
                    "INSERT INTO webhook_attempts (request_id, attempt, started_at)"
                    " VALUES (?,?,?)", (record.request_id, record.attempts, now))
            return claimed
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
                "UPDATE webhooks SET state=?, next_attempt_at=?, delivered_at=CASE WHEN"
                " ?='delivered' THEN ? ELSE delivered_at END WHERE request_id=?",
                (state, next_attempt_at, state, attempt.finished_at, request_id))
        assert self._writer is not None
        return self._writer.submit(write)

    async def redeliver_webhook(self, request_id: str, now: float) -> bool:
        """Make a webhook due now with a fresh set of tries; False while an attempt of it
        is under way."""
        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "UPDATE webhooks SET state='pending', tries=0, next_attempt_at=?"
                " WHERE request_id=? AND state != 'delivering'", (now, request_id)).rowcount == 1
        return await self._write_returning(write)

    async def recover_webhooks(self, now: float) -> int:
        """After a restart: attempts the previous process left unfinished are recorded as
        interrupted, not counted against their webhook's tries, and made due now."""
        def write(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE webhook_attempts SET finished_at=?, error=?"
                         " WHERE finished_at IS NULL", (now, _INTERRUPTED))
            return conn.execute(
                "UPDATE webhooks SET state='pending', tries=MAX(tries - 1, 0),"
                " next_attempt_at=? WHERE state='delivering'", (now,)).rowcount
        return await self._write_returning(write)

    async def next_webhook_due(self) -> float | None:
        def read(conn: sqlite3.Connection) -> float | None:
            return conn.execute("SELECT MIN(next_attempt_at) FROM webhooks"
                                " WHERE state='pending'").fetchone()[0]
        return await self._read(read)

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
