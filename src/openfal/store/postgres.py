"""The shared store: one PostgreSQL database for several gateways, through asyncpg.

Writes that return a future go through one writer task, in the order they are made: it
takes whatever has queued up and applies it in one transaction (group commit); if that
transaction fails, it applies the writes one by one, so only the faulty one fails. Writes
the caller awaits (claims, lease renewals, purges) first wait for the queued writes, then
use the connection pool; reads use the pool at once.

Waiting requests are rows: workers of every gateway claim them with ``FOR UPDATE SKIP
LOCKED``, and a transaction-scoped advisory lock per API key serialises the count that a
key's concurrency limit is checked against. Events are ``NOTIFY openfal`` messages, sent by
the writer after the writes made before them and heard by the other gateways on one
dedicated ``LISTEN`` connection each.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

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
from openfal.store.events import Event, Listener, decode_event, encode_event
from openfal.store.migrations import migrations
from openfal.store.reports import (
    UNFINISHED,
    WEBHOOK_BACKLOG,
    history_statement,
    unfinished_counts,
)

log = logging.getLogger(__name__)

MIGRATIONS = resources.files("openfal.store") / "migrations" / "postgres"
CHANNEL = "openfal"
# Advisory locks: the one-bigint form for migrations, the two-int form (this class, then
# hashtext(key_id)) for API keys; the two forms never collide.
_MIGRATION_LOCK = 0x6F70656E66616C  # "openfal"
_KEY_LOCK_CLASS = 0x6F666B79  # "ofky"
_DEFAULT_PORT = 5432
_POOL_SIZE = 10
_CONNECT_TIMEOUT = 10.0
_BATCH_LIMIT = 256  # writes per group-commit transaction
_PURGE_BATCH = 500  # finished requests deleted per transaction
_NOTIFY_LIMIT = 8000  # PostgreSQL's limit on a NOTIFY payload, in bytes
_PING_SECONDS = 30.0  # how often an idle LISTEN connection is checked
_RECONNECT_MAX_DELAY = 10.0
_DEADLOCK_TRIES = 3  # a transaction PostgreSQL aborted to break a deadlock is run again
_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

T = TypeVar("T")
Write = Callable[[asyncpg.Connection], Awaitable[T]]

_WEBHOOK_COLUMNS = ", ".join(f.name for f in fields(WebhookRecord))
_WEBHOOK_ATTEMPT_COLUMNS = ", ".join(f.name for f in fields(WebhookAttempt))
_APP_REVISION_COLUMNS = ", ".join(f"r.{f.name}" for f in fields(AppRevision))
_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now())"""

_INSERT_REQUEST = """INSERT INTO requests (id, app_id, endpoint_id, path, mode, status,
    priority, payload, headers, options, attempts, created_at, started_at, finished_at,
    result_status, result_body, result_headers, error, error_type, inference_time, key_id,
    billable_units, key_limit, start_deadline)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21, $22, $23, $24)"""

# The next $6 waiting requests of some endpoints after a point ($3, $4, $5) of the queue
# order: each endpoint's are read in order from requests_waiting (one ordered index scan
# per endpoint, merged: `endpoint_id = ANY(...)` would sort every waiting request), then
# locked, skipping those another claim holds. A request whose key already runs key_limit
# others is left out (checked exactly under the key's lock before it is claimed: this count
# may be stale). One row per candidate, in order: its place in the queue (at_*) and, if
# this transaction locked it, the request.
_WAITING = """WITH candidates AS MATERIALIZED (
        SELECT c.id, c.priority, c.created_at, c.seq
        FROM unnest($1::text[]) AS e(endpoint_id)
        CROSS JOIN LATERAL (
            SELECT id, priority, created_at, seq FROM requests r
            WHERE status = 'IN_QUEUE' AND r.endpoint_id = e.endpoint_id
              AND (start_deadline IS NULL OR start_deadline > $2)
              AND (priority, created_at, seq) > ($3, $4, $5)
              AND (key_limit IS NULL OR key_id IS NULL OR key_limit > (
                   SELECT count(*) FROM requests k
                   WHERE k.status = 'IN_PROGRESS' AND k.key_id = r.key_id))
            ORDER BY priority, created_at, seq LIMIT $6) AS c
        ORDER BY c.priority, c.created_at, c.seq LIMIT $6
    ), locked AS (
        SELECT r.* FROM requests r JOIN candidates USING (id)
        WHERE r.status = 'IN_QUEUE'
        FOR UPDATE OF r SKIP LOCKED
    )
    SELECT c.priority AS at_priority, c.created_at AS at_created_at, c.seq AS at_seq, l.*
    FROM candidates c LEFT JOIN locked l USING (id)
    ORDER BY c.priority, c.created_at, c.seq"""
_QUEUE_START = (-(2**31), float("-inf"), 0)  # before any (priority, created_at, seq)

# Locks in one order (by hash) so that claims locking several keys never deadlock.
_LOCK_KEYS = f"""SELECT pg_advisory_xact_lock({_KEY_LOCK_CLASS}, h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) AS k ORDER BY h OFFSET 0) s"""

_RUNNING_PER_KEY = """SELECT key_id, count(*) FROM requests
    WHERE status = 'IN_PROGRESS' AND key_id = ANY($1::text[]) GROUP BY key_id"""

# Requests become IN_PROGRESS under new attempts, each recorded (replacing a row of the same
# number, as the SQLite store does); the requests as stored after.
_START_ATTEMPTS = """WITH started AS (
        UPDATE requests r SET status = 'IN_PROGRESS', attempts = c.attempt,
            attempt_id = c.attempt_id, lease_owner = $4, lease_expires_at = $6,
            started_at = coalesce(r.started_at, $5)
        FROM unnest($1::text[], $2::int[], $3::text[]) AS c(id, attempt, attempt_id)
        WHERE r.id = c.id
        RETURNING r.*
    ), recorded AS (
        INSERT INTO attempts (request_id, attempt, attempt_id, runner_id, started_at)
        SELECT id, attempts, attempt_id, $4, $5 FROM started
        ON CONFLICT (request_id, attempt) DO UPDATE SET attempt_id = excluded.attempt_id,
            runner_id = excluded.runner_id, started_at = excluded.started_at,
            finished_at = NULL, outcome = NULL, error_type = NULL
    )
    SELECT * FROM started"""

# Without keep_io ($10 false) the input and the result body are dropped (realtime frames).
_COMPLETE = """UPDATE requests SET status = 'COMPLETED', finished_at = $2, result_status = $3,
    result_body = CASE WHEN $10::boolean THEN $4::bytea END, result_headers = $5, error = $6,
    error_type = $7, inference_time = $8, billable_units = $9, lease_owner = NULL,
    lease_expires_at = NULL, latest_partial = NULL,
    payload = CASE WHEN $10 THEN payload ELSE ''::bytea END
    WHERE id = $1 AND """
_COMPLETE_WAITING = _COMPLETE + "status = 'IN_QUEUE'"
_COMPLETE_ATTEMPT = _COMPLETE + "status = 'IN_PROGRESS' AND attempt_id = $11"

_REQUEUE = """UPDATE requests SET status = 'IN_QUEUE', lease_owner = NULL,
    lease_expires_at = NULL, progress = NULL, latest_partial = NULL,
    options = coalesce($3, options)
    WHERE id = $1 AND status = 'IN_PROGRESS' AND attempt_id = $2"""

# An attempt that never began: gone, and not counted (see UNSTARTED).
_FORGET_ATTEMPT = """WITH gone AS (DELETE FROM attempts WHERE request_id = $1 AND attempt_id = $2)
    UPDATE requests SET attempts = attempts - 1,
        attempt_id = (SELECT attempt_id FROM attempts WHERE request_id = $1
                      AND attempt_id <> $2 ORDER BY attempt DESC LIMIT 1),
        started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END
    WHERE id = $1"""

_END_ATTEMPT = """UPDATE attempts SET finished_at = $3, outcome = $4, error_type = $5
    WHERE request_id = $1 AND attempt_id = $2"""

# A webhook, due now; its gateway_request_id is the id of the request's last attempt, or the
# request's own id if it never started.
_ADD_WEBHOOK = """INSERT INTO webhooks (request_id, url, user_id, gateway_request_id, state,
        created_at, next_attempt_at)
    VALUES ($1, $2, $3, coalesce((SELECT attempt_id FROM attempts WHERE request_id = $1
                                  ORDER BY attempt DESC LIMIT 1), $1), 'pending', $4, $4)
    ON CONFLICT (request_id) DO NOTHING"""

# A finished request's input and result body dropped; the body it had (locked first, so
# that of two gateways dropping at once only one gets it).
_DROP_PAYLOADS = """WITH old AS (
        SELECT id, result_body FROM requests WHERE id = $1 AND status = 'COMPLETED'
        FOR UPDATE
    )
    UPDATE requests r SET payload = ''::bytea, result_body = NULL FROM old
    WHERE r.id = old.id RETURNING old.result_body"""

_QUEUE_POSITION = """SELECT (SELECT count(*) FROM requests o
        WHERE o.status = 'IN_QUEUE' AND o.app_id = r.app_id
          AND (o.priority, o.created_at, o.seq) < (r.priority, r.created_at, r.seq))
    FROM requests r WHERE r.id = $1 AND r.status = 'IN_QUEUE'"""

_USAGE = """SELECT key_id, endpoint_id, count(*) AS requests,
        count(*) FILTER (WHERE result_status >= 400) AS failed,
        coalesce(sum(started_at - created_at), 0) AS queue_seconds,
        coalesce(sum(finished_at - started_at), 0) AS run_seconds,
        sum(attempts) AS attempts, coalesce(sum(billable_units), 0) AS billable_units
    FROM requests WHERE status = 'COMPLETED' AND finished_at >= $1 AND finished_at < $2
    GROUP BY key_id, endpoint_id ORDER BY key_id, endpoint_id"""

# One batch of the retention purge: the oldest finished requests and all that is theirs.
_PURGE = f"""WITH doomed AS (
        SELECT id FROM requests WHERE status = 'COMPLETED' AND finished_at < $1
        ORDER BY finished_at LIMIT {_PURGE_BATCH} FOR UPDATE SKIP LOCKED
    ), gone_logs AS (DELETE FROM logs WHERE request_id IN (SELECT id FROM doomed)
    ), gone_attempts AS (DELETE FROM attempts WHERE request_id IN (SELECT id FROM doomed)
    ), gone_webhook_attempts AS (
        DELETE FROM webhook_attempts WHERE request_id IN (SELECT id FROM doomed)
    ), gone_webhooks AS (DELETE FROM webhooks WHERE request_id IN (SELECT id FROM doomed))
    DELETE FROM requests WHERE id IN (SELECT id FROM doomed)"""

# Due webhooks, and those whose delivering gateway died (lease lapsed: that attempt is ended
# as interrupted and not held against the webhook's tries), become ``delivering`` under a
# new attempt and lease.
_CLAIM_WEBHOOKS = f"""WITH due AS (
        SELECT request_id, state, attempts, next_attempt_at FROM webhooks
        WHERE (state = 'pending' AND next_attempt_at <= $1)
           OR (state = 'delivering' AND lease_expires_at < $1)
        ORDER BY next_attempt_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED
    ), interrupted AS (
        UPDATE webhook_attempts a SET finished_at = $1,
            error = 'interrupted: the delivering server stopped'
        FROM due WHERE due.state = 'delivering' AND a.request_id = due.request_id
            AND a.attempt = due.attempts AND a.finished_at IS NULL
    ), claimed AS (
        UPDATE webhooks w SET state = 'delivering', attempts = w.attempts + 1,
            tries = w.tries + CASE WHEN due.state = 'delivering' THEN 0 ELSE 1 END,
            next_attempt_at = NULL, lease_expires_at = $3
        FROM due WHERE w.request_id = due.request_id
        RETURNING w.*
    ), started AS (
        INSERT INTO webhook_attempts (request_id, attempt, started_at)
        SELECT request_id, attempts, $1 FROM claimed
    )
    SELECT {", ".join(f"c.{f.name}" for f in fields(WebhookRecord))}
    FROM claimed c JOIN due USING (request_id) ORDER BY due.next_attempt_at NULLS FIRST"""


# A new revision of an app, numbered past the highest it has had and made current: deploys
# of one app at once queue on its deployed_apps row (the insert of it, for a first deploy)
# and each takes the next number.
_ADD_APP_REVISION = """WITH numbered AS (
        INSERT INTO deployed_apps AS d (app_id, current_revision, latest_revision)
        VALUES ($1, 1, 1)
        ON CONFLICT (app_id) DO UPDATE SET current_revision = d.latest_revision + 1,
            latest_revision = d.latest_revision + 1
        RETURNING latest_revision
    )
    INSERT INTO app_revisions (app_id, revision, ref, digest, size, created_at, bundle)
    SELECT $1, latest_revision, $2, $3, $4, $5, $6 FROM numbered
    RETURNING revision"""

_CURRENT_APP_REVISIONS = f"""SELECT {_APP_REVISION_COLUMNS}
    FROM deployed_apps d JOIN app_revisions r
        ON r.app_id = d.app_id AND r.revision = d.current_revision"""

# An existing revision made current; no row if there is none, or if its app was deleted
# while this waited for the app's row.
_SET_CURRENT_APP_REVISION = f"""WITH target AS (
        SELECT {_APP_REVISION_COLUMNS} FROM app_revisions r
        WHERE app_id = $1 AND revision = $2
    ), moved AS (
        UPDATE deployed_apps d SET current_revision = $2 FROM target
        WHERE d.app_id = target.app_id RETURNING d.app_id
    )
    SELECT target.* FROM target JOIN moved USING (app_id)"""


def describe_address(url: str) -> str:
    """``host:port`` of a PostgreSQL URL, for messages (never its user or password)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"invalid PostgreSQL URL: {exc}") from None
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:  # a unix socket folder given as ?host=, or libpq's defaults
        hosts = parse_qs(parts.query).get("host", ["localhost"])[0]
    addresses = []
    for host in hosts.split(","):
        name, port = host, ""
        if ":" in host and not host.endswith("]"):  # not a bare IPv6 address: [::1]
            name, _, port = host.rpartition(":")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"invalid PostgreSQL URL: port {port!r} of {name} is not a port")
        addresses.append(f"{name}:{port or _DEFAULT_PORT}")
    return ",".join(addresses)


def _count(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rpartition(" ")[2])


def _no_nul(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters (SQLite's can): they become U+FFFD."""
    return None if text is None else text.replace("\x00", "\ufffd")


def _record(row: asyncpg.Record) -> RequestRecord:
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
        cancel_requested=row["cancel_requested"],
    )


def _settle(future: asyncio.Future, result: Any = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
        # Nobody need await a write they did not have to wait for.
        future.add_done_callback(lambda f: f.exception())


class _Writer:
    """Applies queued writes in order, many per transaction; each future resolves with
    what its write returned once that is committed, or with the write's error."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._pending: asyncio.Queue[tuple[Write[Any], asyncio.Future] | None] = asyncio.Queue()
        # Counted, not followed through the futures: a caller may cancel its future.
        self._submitted = self._applied = 0
        self._progress = asyncio.Condition()
        self._task = self._loop.create_task(self._run(), name="openfal-store-writer")

    def submit(self, write: Write[T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.put_nowait((write, future))
        self._submitted += 1
        return future

    async def flush(self) -> None:
        """Wait until every write submitted so far has been applied (or has failed)."""
        target = self._submitted
        async with self._progress:
            await self._progress.wait_for(lambda: self._applied >= target)

    async def close(self) -> None:
        """Apply what is queued, then stop."""
        self._pending.put_nowait(None)
        await self._task

    async def _run(self) -> None:
        while True:
            item = await self._pending.get()
            batch: list[tuple[Write[Any], asyncio.Future]] = []
            while item is not None:
                batch.append(item)
                if len(batch) == _BATCH_LIMIT or self._pending.empty():
                    break
                item = self._pending.get_nowait()
            if batch:
                await self._apply(batch)
                async with self._progress:
                    self._applied += len(batch)
                    self._progress.notify_all()
            if item is None:
                return

    async def _apply(self, batch: list[tuple[Write[Any], asyncio.Future]]) -> None:
        try:
            results = await self._transaction([write for write, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                log.warning("store write failed: %s", exc)
                _settle(batch[0][1], error=exc)
                return
            # One write failed (or the connection did): each on its own, so only it fails.
            for item in batch:
                await self._apply([item])
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)

    async def _transaction(self, writes: list[Write[Any]]) -> list[Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            return [await write(conn) for write in writes]


class PostgresNotifier:
    """Events for the other processes using the database: ``NOTIFY openfal`` sent through
    the store's writer, so that a notification follows the writes made before it. Each
    store instance marks its notifications with its own token and ignores them when they
    come back: a process hears only the others'."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self._listeners: list[Listener] = []
        self._writer: _Writer | None = None
        self._pool: asyncpg.Pool | None = None
        self._incoming: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._conn: asyncpg.Connection | None = None

    def publish(self, event: Event) -> None:
        if self._writer is None:  # not open (yet, or any more): events are only hints
            return
        data = encode_event(event)
        self._writer.submit(lambda conn: self._send(conn, data))

    def listen(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def start(self, writer: _Writer, pool: asyncpg.Pool,
                    connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        """Listen (on a connection of its own) before returning; reconnect if it drops."""
        self._writer, self._pool = writer, pool
        # A queue of this event loop's: a store opened again (in another loop) must not
        # keep the one its first loop bound, or every event would be dropped.
        self._incoming = asyncio.Queue()
        lost = await self._listen(await connect())
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_listening(connect, lost),
                                        name="openfal-store-listen"),
                       loop.create_task(self._dispatch(), name="openfal-store-events")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self._writer = self._pool = None

    async def _send(self, conn: asyncpg.Connection, data: bytes) -> None:
        payload = f"{self.token} {base64.b64encode(data).decode()}"
        if len(payload) >= _NOTIFY_LIMIT:
            event_id = await conn.fetchval("INSERT INTO events (payload) VALUES ($1)"
                                           " RETURNING id", data)
            await conn.execute("DELETE FROM events WHERE created_at < now() - interval"
                               " '1 minute'")
            payload = f"{self.token} #{event_id}"
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    async def _listen(self, conn: asyncpg.Connection) -> asyncio.Event:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        await conn.add_listener(CHANNEL, self._heard)
        self._conn = conn
        return lost

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload.partition(" ")[0] != self.token:
            self._incoming.put_nowait(payload)

    async def _keep_listening(self, connect: Callable[[], Awaitable[asyncpg.Connection]],
                              lost: asyncio.Event) -> None:
        while True:
            await self._watch(lost)
            log.warning("store: the LISTEN connection dropped; events are missed until it is"
                        " back (readers also poll)")
            lost = await self._reconnect(connect)
            log.warning("store: listening for events again")

    async def _watch(self, lost: asyncio.Event) -> None:
        """Return once the LISTEN connection is gone (checked by a query when idle)."""
        assert self._conn is not None
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), _PING_SECONDS)
            if not lost.is_set() and not await self._alive(self._conn):
                break
        self._conn.terminate()

    @staticmethod
    async def _alive(conn: asyncpg.Connection) -> bool:
        try:
            await conn.fetchval("SELECT 1", timeout=_CONNECT_TIMEOUT)
        except _CONNECTION_ERRORS:
            return False
        return True

    async def _reconnect(self, connect: Callable[[], Awaitable[asyncpg.Connection]]
                         ) -> asyncio.Event:
        delay = 0.1
        while True:
            try:
                return await self._listen(await connect())
            except (ConfigError, *_CONNECTION_ERRORS) as exc:
                log.warning("store: cannot listen for events yet (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_DELAY)

    async def _dispatch(self) -> None:
        """Hand other processes' events to the listeners, in the order they came."""
        while True:
            event = await self._decode(await self._incoming.get())
            if event is None:
                continue
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("event listener failed on %r", event)

    async def _decode(self, payload: str) -> Event | None:
        body = payload.partition(" ")[2]
        try:
            if body.startswith("#"):
                assert self._pool is not None
                data = await self._pool.fetchval("SELECT payload FROM events WHERE id = $1",
                                                 int(body[1:]))
                if data is None:  # purged: a reader this late has polled already
                    return None
            else:
                data = base64.b64decode(body)
            return decode_event(data)
        except (ValueError, KeyError, TypeError, *_CONNECTION_ERRORS) as exc:
            log.warning("store: ignored an event that cannot be read: %s", exc)
            return None


class PostgresStore:
    """The shared store: any number of gateways on one PostgreSQL database."""

    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.address = describe_address(url)
        self.notifier = PostgresNotifier()
        self._pool: asyncpg.Pool | None = None
        self._writer: _Writer | None = None
        self._version = 0

    async def open(self) -> None:
        self._pool = await self._connect(asyncpg.create_pool, min_size=1, max_size=_POOL_SIZE)
        try:
            self._version = await self._migrate()
            self._writer = _Writer(self._pool)
            await self.notifier.start(self._writer, self._pool, lambda: self._connect(
                asyncpg.connect, server_settings={"application_name": "openfal-listen"}))
        except BaseException:
            await self.close()
            raise

    async def _connect(self, connect: Callable[..., Awaitable[T]], **options: Any) -> T:
        """A connection or pool; one clear line (a ConfigError) when the database cannot be
        reached or the URL is wrong."""
        options.setdefault("server_settings", {"application_name": "openfal"})
        try:
            return await connect(self.url, timeout=_CONNECT_TIMEOUT, **options)
        except ValueError as exc:  # asyncpg's URL parsing
            raise ConfigError(f"invalid PostgreSQL URL: {exc}") from None
        except _CONNECTION_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            raise ConfigError(f"cannot connect to the PostgreSQL store at {self.address}:"
                              f" {reason}") from None

    async def _migrate(self) -> int:
        """Apply the migrations the database has not had, in one transaction under an
        advisory lock (gateways starting together migrate once); its schema version."""
        assert self._pool is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(_MIGRATIONS_TABLE)
            version = await conn.fetchval("SELECT coalesce(max(version), 0)"
                                          " FROM schema_migrations")
            for number, script in migrations(MIGRATIONS):
                if number <= version:
                    continue
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
                log.info("store schema upgraded to version %d", number)
                version = number
        return version

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        await self.notifier.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        return self._version

    # How statements run: writes through the writer, awaited writes after it, reads at once
    @property
    def _db(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    def _submit(self, write: Write[T]) -> asyncio.Future[T]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(write)

    def _execute(self, sql: str, *args: Any) -> asyncio.Future[None]:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(sql, *args)
        return self._submit(write)

    async def _after_writes(self) -> asyncpg.Pool:
        """The pool, once the writes made before have been applied (the order of writes)."""
        assert self._writer is not None, "store is not open"
        await self._writer.flush()
        return self._db

    # Requests and the queue
    def add_request(self, record: RequestRecord,
                    claim: Claim | None = None) -> asyncio.Future[None]:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(
                _INSERT_REQUEST, record.id, record.app_id, record.endpoint_id, record.path,
                record.mode.value, record.status.value, record.priority, record.payload,
                json.dumps(record.headers), json.dumps(record.options), record.attempts,
                record.created_at, record.started_at, record.finished_at,
                record.result_status, record.result_body, json.dumps(record.result_headers),
                _no_nul(record.error), record.error_type, record.inference_time,
                record.key_id, record.billable_units, record.options.get("key_limit"),
                record.options.get("start_deadline"))
            if claim is not None:
                await conn.execute(
                    _START_ATTEMPTS, [record.id], [claim.request.attempts], [claim.attempt_id],
                    claim.worker_id, claim.request.started_at or record.created_at,
                    claim.lease_expires_at)
        return self._submit(write)

    async def claim(self, endpoint_ids: Sequence[str], worker_id: str, *, limit: int,
                    lease_seconds: float, now: float) -> list[Claim]:
        if limit <= 0 or not endpoint_ids:
            return []
        pool = await self._after_writes()

        async def claim_once() -> list[Claim]:
            async with pool.acquire() as conn, conn.transaction():
                return await _claim_rows(conn, list(endpoint_ids), worker_id, limit, now,
                                         now + lease_seconds)
        return await _retrying_deadlocks(claim_once)

    async def renew_leases(self, worker_id: str, attempt_ids: Sequence[str],
                           until: float) -> LeaseReport:
        if not attempt_ids:
            return LeaseReport()
        pool = await self._after_writes()
        rows = await _retrying_deadlocks(lambda: pool.fetch(
            "UPDATE requests SET lease_expires_at = $3 WHERE attempt_id = ANY($2::text[])"
            " AND status = 'IN_PROGRESS' AND lease_owner = $1"
            " RETURNING attempt_id, cancel_requested", worker_id, list(attempt_ids), until))
        held = {row["attempt_id"]: row["cancel_requested"] for row in rows}
        return LeaseReport(lost=[a for a in attempt_ids if a not in held],
                           cancelled=[a for a in attempt_ids if held.get(a)])

    async def lapsed(self, now: float, limit: int) -> list[Claim]:
        rows = await self._db.fetch(
            "SELECT * FROM requests WHERE status = 'IN_PROGRESS' AND lease_expires_at < $1"
            " ORDER BY lease_expires_at LIMIT $2", now, limit)
        return [Claim(_record(row), row["attempt_id"], row["lease_expires_at"],
                      row["lease_owner"]) for row in rows]

    async def release_leases(self, owner_prefix: str) -> int:
        pool = await self._after_writes()
        return _count(await pool.execute(
            "UPDATE requests SET lease_expires_at = 0 WHERE status = 'IN_PROGRESS'"
            " AND starts_with(lease_owner, $1)", owner_prefix))

    async def overdue(self, now: float, limit: int) -> list[RequestRecord]:
        rows = await self._db.fetch(
            "SELECT * FROM requests WHERE status = 'IN_QUEUE' AND start_deadline IS NOT NULL"
            " AND start_deadline <= $1 ORDER BY start_deadline LIMIT $2", now, limit)
        return [_record(row) for row in rows]

    def complete(self, request_id: str, outcome: Outcome, finished_at: float,
                 webhook: WebhookTarget | None = None, *, attempt_id: str | None = None,
                 attempt_outcome: str | None = None,
                 keep_io: bool = True) -> asyncio.Future[bool]:
        """Record the outcome and, if the request asked for one, queue its webhook in the
        same transaction: a crash never leaves a completed request without its webhook."""
        values = (request_id, finished_at, outcome.status, outcome.body,
                  json.dumps(outcome.headers), _no_nul(outcome.error), outcome.error_type,
                  outcome.inference_time, outcome.billable_units, keep_io)

        async def write(conn: asyncpg.Connection) -> bool:
            if attempt_id is None:
                status = await conn.execute(_COMPLETE_WAITING, *values)
            else:
                status = await conn.execute(_COMPLETE_ATTEMPT, *values, attempt_id)
            if not _count(status):
                return False
            if attempt_id is not None:
                await conn.execute(_END_ATTEMPT, request_id, attempt_id, finished_at,
                                   attempt_outcome or "ok", outcome.error_type)
                if attempt_outcome == UNSTARTED:
                    await conn.execute(_FORGET_ATTEMPT, request_id, attempt_id)
            if webhook is not None:
                await conn.execute(_ADD_WEBHOOK, request_id, webhook.url, webhook.user_id,
                                   finished_at)
            return True
        return self._submit(write)

    def requeue(self, request_id: str, attempt_id: str, finished_at: float,
                attempt_outcome: str, error_type: str | None,
                options: dict[str, Any] | None = None) -> asyncio.Future[bool]:
        async def write(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(_REQUEUE, request_id, attempt_id,
                                        None if options is None else json.dumps(options))
            if not _count(status):
                return False
            await conn.execute(_END_ATTEMPT, request_id, attempt_id, finished_at,
                               attempt_outcome, error_type)
            if attempt_outcome == UNSTARTED:
                await conn.execute(_FORGET_ATTEMPT, request_id, attempt_id)
            return True
        return self._submit(write)

    def request_cancel(self, request_id: str) -> asyncio.Future[None]:
        return self._execute("UPDATE requests SET cancel_requested = true WHERE id = $1",
                             request_id)

    def set_options(self, request_id: str, options: dict[str, Any]) -> asyncio.Future[None]:
        return self._execute("UPDATE requests SET options = $2 WHERE id = $1",
                             request_id, json.dumps(options))

    def set_live(self, request_id: str, progress: dict[str, Any] | None,
                 partial: bytes | None) -> asyncio.Future[None]:
        return self._execute(
            "UPDATE requests SET progress = coalesce($2, progress),"
            " latest_partial = coalesce($3, latest_partial)"
            " WHERE id = $1 AND status = 'IN_PROGRESS'",
            request_id, None if progress is None else json.dumps(progress), partial)

    def add_logs(self, request_id: str, entries: list[LogEntry]) -> asyncio.Future[None]:
        return self._execute(
            "INSERT INTO logs (request_id, timestamp, level, source, message)"
            " SELECT $1, * FROM unnest($2::float8[], $3::text[], $4::text[], $5::text[])",
            request_id, [e.timestamp for e in entries], [e.level for e in entries],
            [e.source for e in entries], [_no_nul(e.message) for e in entries])

    # Reads
    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._db.fetchrow("SELECT * FROM requests WHERE id = $1", request_id)
        return _record(row) if row else None

    async def get_live(self, request_id: str) -> tuple[dict[str, Any] | None, bytes | None]:
        row = await self._db.fetchrow(
            "SELECT progress, latest_partial FROM requests WHERE id = $1", request_id)
        if row is None:
            return None, None
        return (json.loads(row[0]) if row[0] else None), row[1]

    async def get_logs(self, request_id: str, offset: int = 0) -> list[LogEntry]:
        rows = await self._db.fetch(
            "SELECT message, level, source, timestamp FROM logs WHERE request_id = $1"
            " ORDER BY seq OFFSET $2", request_id, offset)
        return [LogEntry(*row) for row in rows]

    async def get_attempts(self, request_id: str) -> list[dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT * FROM attempts WHERE request_id = $1 ORDER BY attempt", request_id)
        return [dict(row) for row in rows]

    async def queue_position(self, request_id: str) -> int | None:
        return await self._db.fetchval(_QUEUE_POSITION, request_id)

    async def waiting_requests(self) -> list[RequestRecord]:
        rows = await self._db.fetch("SELECT * FROM requests WHERE status = 'IN_QUEUE'")
        records = [_record(row) for row in rows]
        for record in records:
            record.payload = b""
        return records

    async def waiting(self, endpoint_ids: Sequence[str], cap: int | None = None) -> int:
        return await self._db.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM requests WHERE status = 'IN_QUEUE'"
            " AND endpoint_id = ANY($1::text[]) LIMIT $2) AS waiting", list(endpoint_ids), cap)

    async def running_for_key(self, key_id: str) -> int:
        return await self._db.fetchval(
            "SELECT count(*) FROM requests WHERE status = 'IN_PROGRESS' AND key_id = $1",
            key_id)

    async def request_id_for_attempt(self, attempt_id: str) -> str | None:
        return await self._db.fetchval(
            "SELECT request_id FROM attempts WHERE attempt_id = $1", attempt_id)

    # Request history and metrics
    async def history(self, query: HistoryQuery) -> list[RequestRecord]:
        sql, params = history_statement(query, lambda number: f"${number}")
        return [_record(row) for row in await self._db.fetch(sql, *params)]

    def drop_payloads(self, request_id: str) -> asyncio.Future[bytes | None]:
        async def write(conn: asyncpg.Connection) -> bytes | None:
            return await conn.fetchval(_DROP_PAYLOADS, request_id)
        return self._submit(write)

    async def unfinished_counts(self) -> dict[tuple[str, Status], int]:
        return unfinished_counts(await self._db.fetch(UNFINISHED))

    async def webhook_backlog(self) -> dict[str, int]:
        return dict(await self._db.fetch(WEBHOOK_BACKLOG))

    # API keys
    def add_key(self, key: KeyRecord) -> asyncio.Future[None]:
        return self._execute(
            "INSERT INTO api_keys (id, secret_hash, scope, name, created_at, max_concurrency)"
            " VALUES ($1, $2, $3, $4, $5, $6)", key.id, key.secret_hash, key.scope, key.name,
            key.created_at, key.max_concurrency)

    def revoke_key(self, key_id: str, revoked_at: float) -> asyncio.Future[None]:
        return self._execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            key_id, revoked_at)

    def set_key_concurrency(self, key_id: str, limit: int | None) -> asyncio.Future[None]:
        return self._execute("UPDATE api_keys SET max_concurrency = $2 WHERE id = $1",
                             key_id, limit)

    async def list_keys(self) -> list[KeyRecord]:
        rows = await self._db.fetch(
            "SELECT id, secret_hash, scope, name, created_at, revoked_at, max_concurrency"
            " FROM api_keys ORDER BY created_at")
        return [KeyRecord(**dict(row)) for row in rows]

    # Usage
    async def usage(self, since: float, until: float) -> list[UsageRow]:
        rows = await self._db.fetch(_USAGE, since, until)
        return [UsageRow(**dict(row)) for row in rows]

    async def purge_finished_before(self, timestamp: float) -> int:
        pool = await self._after_writes()
        removed = 0
        while True:  # each batch is its own transaction: other writes go on between them
            batch = _count(await pool.execute(_PURGE, timestamp))
            removed += batch
            if batch < _PURGE_BATCH:
                return removed

    # Secrets shared by the gateways of this store
    async def get_secret(self, name: str) -> bytes | None:
        return await self._db.fetchval("SELECT value FROM secrets WHERE name = $1", name)

    async def put_secret_once(self, name: str, value: bytes) -> bytes:
        pool = await self._after_writes()
        async with pool.acquire() as conn:
            # Two statements: the SELECT must see a value another gateway just committed.
            await conn.execute("INSERT INTO secrets (name, value) VALUES ($1, $2)"
                               " ON CONFLICT (name) DO NOTHING", name, value)
            return await conn.fetchval("SELECT value FROM secrets WHERE name = $1", name)

    async def replace_secret(self, name: str, expected: bytes, value: bytes) -> bool:
        pool = await self._after_writes()
        status = await pool.execute("UPDATE secrets SET value = $3 WHERE name = $1"
                                    " AND value = $2", name, expected, value)
        return status == "UPDATE 1"

    async def set_secret(self, name: str, value: bytes) -> None:
        pool = await self._after_writes()
        await pool.execute("INSERT INTO secrets (name, value) VALUES ($1, $2)"
                           " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                           name, value)

    async def delete_secret(self, name: str) -> bool:
        pool = await self._after_writes()
        return await pool.execute("DELETE FROM secrets WHERE name = $1", name) == "DELETE 1"

    async def list_secrets(self, prefix: str) -> list[tuple[str, bytes]]:
        # COLLATE "C": the byte order SQLite uses, whatever the database's collation.
        rows = await self._db.fetch("SELECT name, value FROM secrets WHERE left(name,"
                                    ' length($1)) = $1 ORDER BY name COLLATE "C"', prefix)
        return [(row["name"], row["value"]) for row in rows]

    # Deployed apps
    async def add_app_revision(self, app_id: str, ref: str, bundle: bytes,
                               created_at: float) -> AppRevision:
        digest = hashlib.sha256(bundle).hexdigest()
        pool = await self._after_writes()
        revision = await pool.fetchval(_ADD_APP_REVISION, app_id, ref, digest, len(bundle),
                                       created_at, bundle)
        return AppRevision(app_id, revision, ref, digest, len(bundle), created_at)

    async def app_revisions(self, app_id: str) -> list[AppRevision]:
        rows = await self._db.fetch(f"SELECT {_APP_REVISION_COLUMNS} FROM app_revisions r"
                                    " WHERE app_id = $1 ORDER BY revision", app_id)
        return [AppRevision(*row) for row in rows]

    async def current_app_revisions(self) -> dict[str, AppRevision]:
        rows = await self._db.fetch(_CURRENT_APP_REVISIONS)
        return {row["app_id"]: AppRevision(*row) for row in rows}

    async def set_current_app_revision(self, app_id: str,
                                       revision: int) -> AppRevision | None:
        pool = await self._after_writes()
        row = await pool.fetchrow(_SET_CURRENT_APP_REVISION, app_id, revision)
        return AppRevision(*row) if row else None

    async def app_bundle(self, app_id: str, revision: int) -> bytes | None:
        return await self._db.fetchval("SELECT bundle FROM app_revisions WHERE app_id = $1"
                                       " AND revision = $2", app_id, revision)

    async def delete_app(self, app_id: str) -> bool:
        pool = await self._after_writes()
        async with pool.acquire() as conn, conn.transaction():
            # The app's row first: a deploy under way commits before this goes on, and the
            # next statement (a new snapshot) sees the revision it added.
            deleted = _count(await conn.execute("DELETE FROM deployed_apps WHERE app_id = $1",
                                                app_id))
            await conn.execute("DELETE FROM app_revisions WHERE app_id = $1", app_id)
        return deleted == 1

    # Webhook outbox
    async def claim_due_webhooks(self, now: float, limit: int,
                                 lease_seconds: float) -> list[WebhookRecord]:
        pool = await self._after_writes()
        rows = await pool.fetch(_CLAIM_WEBHOOKS, now, limit, now + lease_seconds)
        return [WebhookRecord(*row) for row in rows]

    async def release_webhook_leases(self) -> int:
        """For a process that owns the store alone: with gateways sharing it (as they do
        PostgreSQL) this would take deliveries from live gateways, so they leave the leases
        to lapse instead."""
        pool = await self._after_writes()
        return _count(await pool.execute(
            "UPDATE webhooks SET lease_expires_at = 0 WHERE state = 'delivering'"))

    def end_webhook_attempt(self, request_id: str, attempt: WebhookAttempt, state: str,
                            next_attempt_at: float | None) -> asyncio.Future[None]:
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE webhook_attempts SET finished_at = $3, status_code = $4, error = $5,"
                " duration = $6 WHERE request_id = $1 AND attempt = $2",
                request_id, attempt.attempt, attempt.finished_at, attempt.status_code,
                _no_nul(attempt.error), attempt.duration)
            await conn.execute(
                "UPDATE webhooks SET state = $3, next_attempt_at = $4, lease_expires_at = NULL,"
                " delivered_at = CASE WHEN $3 = 'delivered' THEN $5 ELSE delivered_at END"
                " WHERE request_id = $1 AND attempts = $2",
                request_id, attempt.attempt, state, next_attempt_at, attempt.finished_at)
        return self._submit(write)

    async def redeliver_webhook(self, request_id: str, now: float) -> bool:
        """Make a webhook due now with a fresh set of tries; False while an attempt of it
        is under way."""
        pool = await self._after_writes()
        return _count(await pool.execute(
            "UPDATE webhooks SET state = 'pending', tries = 0, next_attempt_at = $2"
            " WHERE request_id = $1 AND state <> 'delivering'", request_id, now)) == 1

    async def next_webhook_due(self) -> float | None:
        return await self._db.fetchval(
            "SELECT min(coalesce(next_attempt_at, lease_expires_at)) FROM webhooks"
            " WHERE state IN ('pending', 'delivering')")

    async def get_webhook(self, request_id: str) -> WebhookRecord | None:
        row = await self._db.fetchrow(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE request_id = $1", request_id)
        return WebhookRecord(*row) if row else None

    async def get_webhook_attempts(self, request_id: str) -> list[WebhookAttempt]:
        rows = await self._db.fetch(
            f"SELECT {_WEBHOOK_ATTEMPT_COLUMNS} FROM webhook_attempts WHERE request_id = $1"
            " ORDER BY attempt", request_id)
        return [WebhookAttempt(*row) for row in rows]


async def _retrying_deadlocks(transaction: Callable[[], Awaitable[T]]) -> T:
    """Run ``transaction``, again if PostgreSQL aborted it to break a deadlock (nothing of
    it was committed): with the writes of other gateways, whose order no one chooses."""
    for _ in range(_DEADLOCK_TRIES - 1):
        with contextlib.suppress(asyncpg.DeadlockDetectedError):
            return await transaction()
    return await transaction()


async def _claim_rows(conn: asyncpg.Connection, endpoint_ids: list[str], worker_id: str,
                      limit: int, now: float, lease_until: float) -> list[Claim]:
    """Claim up to ``limit`` waiting requests in queue order, within their keys' limits."""
    claims: list[Claim] = []
    running: dict[str, int] = {}
    after = _QUEUE_START
    while len(claims) < limit:
        need = limit - len(claims)
        candidates = await conn.fetch(_WAITING, endpoint_ids, now, *after, need)
        locked = [row for row in candidates if row["id"] is not None]
        picked = await _within_key_limits(conn, locked, running)
        claims += await _start_claims(conn, picked, worker_id, now, lease_until)
        if len(candidates) < need:
            break
        last = candidates[-1]
        after = (last["at_priority"], last["at_created_at"], last["at_seq"])
    return claims


async def _within_key_limits(conn: asyncpg.Connection, rows: list[asyncpg.Record],
                             running: dict[str, int]) -> list[asyncpg.Record]:
    """The rows whose key may run one more request (``running``: what each key runs,
    counting the claims made so far). A key's count is read under its advisory lock,
    which this transaction holds until it commits, so concurrent claims see each other's."""
    keys = sorted({row["key_id"] for row in rows if row["key_id"] is not None
                   and row["key_limit"] is not None} - running.keys())
    if keys:
        await conn.execute(_LOCK_KEYS, keys)
        running.update(dict.fromkeys(keys, 0))
        running.update(dict(await conn.fetch(_RUNNING_PER_KEY, keys)))
    picked = []
    for row in rows:
        key, key_limit = row["key_id"], row["key_limit"]
        if key is not None and key_limit is not None:
            if running[key] >= key_limit:
                continue
            running[key] += 1
        picked.append(row)
    return picked


async def _start_claims(conn: asyncpg.Connection, rows: list[asyncpg.Record], worker_id: str,
                        now: float, lease_until: float) -> list[Claim]:
    if not rows:
        return []
    attempt_ids = [new_id() for _ in rows]
    started = await conn.fetch(_START_ATTEMPTS, [row["id"] for row in rows],
                               [row["attempts"] + 1 for row in rows], attempt_ids, worker_id,
                               now, lease_until)
    by_id = {row["id"]: _record(row) for row in started}
    return [Claim(by_id[row["id"]], attempt_id, lease_until, worker_id)
            for row, attempt_id in zip(rows, attempt_ids, strict=True)]
