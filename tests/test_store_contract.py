"""The store contract (openfal.store.base.Store), against every store: SQLite and PostgreSQL.

Each test gets an opened store on a fresh database. Times are fixed numbers, never the
clock: ``now`` is what the store is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from openfal.errors import ConfigError
from openfal.store import open_store
from openfal.store.base import (
    AppRevision,
    Claim,
    HistoryQuery,
    HistoryStatus,
    KeyRecord,
    LogEntry,
    Mode,
    Outcome,
    RequestRecord,
    Status,
    Store,
    WebhookAttempt,
    WebhookTarget,
)
from openfal.store.events import CancelRequested, Event, PartialProduced, WorkAdded
from openfal.store.migrations import migrations
from openfal.store.postgres import MIGRATIONS as PG_MIGRATIONS
from openfal.store.postgres import PostgresStore
from openfal.store.sqlite import SQLiteStore
from services_pg import PostgresServer

RELEASE_DB = Path(__file__).parent / "data" / "release-0.1.db"
T0 = 1_700_000_000.0
NOW = T0 + 100
LEASE = 30.0
WAIT = 20.0  # seconds to wait for something that should take milliseconds
HOOK = WebhookTarget(url="https://example.com/hook", user_id="k1")


def latest_migration(kind: str) -> int:
    return migrations(resources.files("openfal.store") / "migrations" / kind)[-1][0]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    opened = open_store(url, tmp_path)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def pg_store(postgres_url: str, tmp_path: Path) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open()
    yield opened
    await opened.close()


Peer = Callable[[Store], Awaitable[Store]]


@pytest.fixture
async def open_peer() -> AsyncIterator[Peer]:
    """Another gateway on a store's database (PostgreSQL), or the store itself (SQLite: one
    process per database)."""
    peers: list[Store] = []

    async def peer(store: Store) -> Store:
        if not isinstance(store, PostgresStore):
            return store
        other = PostgresStore(store.url)
        await other.open()
        peers.append(other)
        return other
    yield peer
    for other in peers:
        await other.close()


def queued(request_id: str, *, endpoint: str = "o/a", app: str = "o/a", priority: int = 0,
            created_at: float = T0, key: str | None = None, key_limit: int | None = None,
            **options: Any) -> RequestRecord:
    if key_limit is not None:
        options["key_limit"] = key_limit
    return RequestRecord(id=request_id, app_id=app, endpoint_id=endpoint, path="/",
                         mode=Mode.QUEUE, status=Status.IN_QUEUE,
                         payload=b'{"id": "%s"}' % request_id.encode(), created_at=created_at,
                         priority=priority, key_id=key, options=options)


async def add(store: Store, *records: RequestRecord) -> None:
    await asyncio.gather(*(store.add_request(r) for r in records))


async def claim(store: Store, endpoints: tuple[str, ...] = ("o/a",), worker: str = "w1",
                limit: int = 100, now: float = NOW) -> list[Claim]:
    return await store.claim(list(endpoints), worker, limit=limit, lease_seconds=LEASE,
                             now=now)


def ids(claims: list[Claim]) -> list[str]:
    return [c.request.id for c in claims]


def ok(body: bytes = b'{"ok": true}') -> Outcome:
    return Outcome(status=200, body=body, inference_time=0.5,
                   headers={"x-fal-billable-units": "2"})


# Claims

async def test_claim_takes_priority_then_arrival_order(store: Store) -> None:
    await add(store, queued("late", created_at=T0 + 2), queued("urgent", priority=-1,
              created_at=T0 + 3), queued("low", priority=1, created_at=T0))
    for name in ("first", "second", "third"):  # the same instant: the order they came in
        await store.add_request(queued(name, created_at=T0 + 1))
    assert ids(await claim(store)) == ["urgent", "first", "second", "third", "late", "low"]


async def test_claim_takes_only_the_endpoints_asked_and_at_most_limit(store: Store) -> None:
    await add(store, *(queued(f"a{i}", created_at=T0 + i) for i in range(3)),
              queued("b", endpoint="o/b"), queued("c", endpoint="o/c", created_at=T0 + 5))
    assert ids(await claim(store, ("o/a", "o/c"), limit=2)) == ["a0", "a1"]
    assert ids(await claim(store, ("o/a", "o/c"))) == ["a2", "c"]
    assert await claim(store, ("o/a", "o/c")) == []
    assert await claim(store, ("o/b",), limit=0) == []
    assert await store.waiting(["o/b"]) == 1


async def test_a_claimed_request_runs_its_next_attempt(store: Store) -> None:
    await store.add_request(queued("r"))
    [first] = await claim(store, worker="gw1:runner1")
    assert first.request.status == Status.IN_PROGRESS
    assert first.request.attempts == 1
    assert first.request.attempt_id == first.attempt_id
    assert first.request.started_at == NOW
    assert first.worker_id == "gw1:runner1"
    assert first.lease_expires_at == NOW + LEASE
    stored = await store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.attempts) == (Status.IN_PROGRESS, 1)
    [attempt] = await store.get_attempts("r")
    assert attempt["attempt"] == 1
    assert attempt["attempt_id"] == first.attempt_id
    assert attempt["runner_id"] == "gw1:runner1"
    assert attempt["started_at"] == NOW
    assert await store.request_id_for_attempt(first.attempt_id) == "r"
    assert await store.waiting(["o/a"]) == 0


async def test_claim_keeps_each_key_within_its_limit(store: Store) -> None:
    await add(store, *(queued(f"k{i}", key="k", key_limit=2, created_at=T0 + i)
                       for i in range(4)),
              queued("anonymous", created_at=T0 + 9), queued("other", key="o", key_limit=1,
                                                               created_at=T0 + 10))
    claims = await claim(store)
    assert ids(claims) == ["k0", "k1", "anonymous", "other"]
    assert await store.running_for_key("k") == 2
    assert await claim(store) == []
    assert await store.complete("k0", ok(), NOW, attempt_id=claims[0].attempt_id)
    assert ids(await claim(store)) == ["k2"]


async def test_claim_looks_past_a_long_run_of_requests_of_a_key_at_its_limit(
        store: Store) -> None:
    await store.add_request(queued("running", key="busy", key_limit=1))
    await claim(store)
    await add(store, *(queued(f"a{i:02}", created_at=T0 + i) for i in range(10)),
              *(queued(f"b{i:02}", key="busy", key_limit=1, created_at=T0 + 10 + i)
                for i in range(54)),
              *(queued(f"c{i}", created_at=T0 + 100 + i) for i in range(5)))
    assert ids(await claim(store, limit=12)) == [
        *(f"a{i:02}" for i in range(10)), "c0", "c1"]


async def test_claims_from_many_connections_at_once_keep_the_key_limit(
        pg_store: PostgresStore, open_peer: Peer) -> None:
    await add(pg_store, *(queued(f"r{i}", endpoint=f"o/e{i % 2}", key="k", key_limit=3,
                                  created_at=T0 + i) for i in range(30)))
    gateways = [await open_peer(pg_store) for _ in range(4)]
    claims = await asyncio.gather(*(
        claim(gateways[i % 4], (f"o/e{i % 2}",), worker=f"w{i}", limit=1) for i in range(20)))
    assert sum(len(c) for c in claims) == 3
    assert await pg_store.running_for_key("k") == 3


async def test_claim_skips_requests_another_transaction_holds(
        pg_store: PostgresStore) -> None:
    await add(pg_store, *(queued(f"r{i}", created_at=T0 + i) for i in range(4)))
    other = await asyncpg.connect(pg_store.url)
    try:
        async with other.transaction():
            await other.execute("SELECT 1 FROM requests WHERE id = ANY($1::text[])"
                                " FOR UPDATE", ["r0", "r2"])
            assert ids(await claim(pg_store, limit=1)) == ["r1"]
            assert ids(await claim(pg_store)) == ["r3"]
        assert ids(await claim(pg_store)) == ["r0", "r2"]
    finally:
        await other.close()


async def test_claim_skips_requests_past_their_start_deadline(store: Store) -> None:
    await add(store, queued("expired", start_deadline=NOW - 1),
              queued("due_now", start_deadline=NOW, created_at=T0 + 1),
              queued("in_time", start_deadline=NOW + 1, created_at=T0 + 2),
              queued("whenever", created_at=T0 + 3))
    assert ids(await claim(store)) == ["in_time", "whenever"]
    overdue = await store.overdue(NOW, 10)
    assert sorted(r.id for r in overdue) == ["due_now", "expired"]
    assert await store.overdue(NOW, 1) != []
    assert await store.overdue(NOW - 5, 10) == []


async def test_a_request_added_with_its_claim_is_running(store: Store) -> None:
    record = queued("direct", key="k")
    record.mode = Mode.DIRECT
    running = RequestRecord(**{**record.__dict__, "status": Status.IN_PROGRESS,
                               "attempts": 1, "started_at": NOW})
    await store.add_request(record, Claim(running, "att-1", NOW + LEASE, "gw1:runner1"))
    stored = await store.get_request("direct")
    assert stored is not None
    assert (stored.status, stored.attempts, stored.started_at) == (Status.IN_PROGRESS, 1, NOW)
    assert [(a["attempt_id"], a["runner_id"]) for a in await store.get_attempts("direct")] == [
        ("att-1", "gw1:runner1")]
    assert await store.running_for_key("k") == 1
    assert await claim(store) == []
    [lapsed] = await store.lapsed(NOW + LEASE + 1, 10)
    assert (lapsed.attempt_id, lapsed.worker_id) == ("att-1", "gw1:runner1")
    assert await store.complete("direct", ok(), NOW + 1, attempt_id="att-1")


# Leases

async def test_renewing_leases_extends_them_and_reports_lost_and_cancelled(
        store: Store) -> None:
    await add(store, queued("a"), queued("b", created_at=T0 + 1),
              queued("c", created_at=T0 + 2))
    a, b, c = await claim(store)
    report = await store.renew_leases("w1", [a.attempt_id, b.attempt_id, "nobody"], NOW + 300)
    assert (report.lost, report.cancelled) == (["nobody"], [])
    assert ids(await store.lapsed(NOW + 299, 10)) == ["c"]

    await store.request_cancel("b")
    cancelled = await store.get_request("b")
    assert cancelled is not None and cancelled.cancel_requested
    assert await store.complete("c", ok(), NOW, attempt_id=c.attempt_id)
    report = await store.renew_leases("w1", [a.attempt_id, b.attempt_id, c.attempt_id], NOW + 400)
    assert (report.lost, report.cancelled) == ([c.attempt_id], [b.attempt_id])
    # Another worker cannot hold what it did not claim.
    report = await store.renew_leases("w2", [a.attempt_id], NOW + 500)
    assert (report.lost, report.cancelled) == ([a.attempt_id], [])
    assert (await store.renew_leases("w1", [], NOW)).lost == []


async def test_lapsed_finds_running_requests_whose_lease_ran_out(store: Store) -> None:
    await add(store, queued("a"), queued("b", created_at=T0 + 1))
    first = await claim(store, limit=1)
    second = await claim(store, limit=1, now=NOW + 10)
    assert await store.lapsed(NOW + LEASE, 10) == []
    [lapsed] = await store.lapsed(NOW + LEASE + 1, 10)
    assert (lapsed.request.id, lapsed.attempt_id) == ("a", first[0].attempt_id)
    assert (lapsed.worker_id, lapsed.lease_expires_at) == ("w1", NOW + LEASE)
    assert lapsed.request.status == Status.IN_PROGRESS
    assert ids(await store.lapsed(NOW + 100, 10)) == ["a", "b"]
    assert ids(await store.lapsed(NOW + 100, 1)) == ["a"]
    assert second[0].request.id == "b"


async def test_release_leases_lapses_those_of_one_owner(store: Store) -> None:
    await add(store, queued("a"), queued("b", created_at=T0 + 1))
    await claim(store, worker="gw1:r1", limit=1)
    await claim(store, worker="gw2:r1", limit=1)
    assert await store.release_leases("gw1:") == 1
    [lapsed] = await store.lapsed(NOW, 10)
    assert (lapsed.request.id, lapsed.worker_id) == ("a", "gw1:r1")


# The fence

async def test_only_the_current_attempt_may_end_a_request(store: Store) -> None:
    await store.add_request(queued("r"))
    [stale] = await claim(store)
    assert await store.requeue("r", stale.attempt_id, NOW + 1, "lost", "runner_disconnected")
    [current] = await claim(store, worker="w2", now=NOW + 2)
    assert current.request.attempts == 2
    assert current.attempt_id != stale.attempt_id

    assert not await store.complete("r", ok(b"late"), NOW + 3, HOOK,
                                    attempt_id=stale.attempt_id)
    assert not await store.requeue("r", stale.attempt_id, NOW + 3, "lost", None)
    assert not await store.complete("r", ok(), NOW + 3)  # no attempt: only while waiting
    stored = await store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.attempts, stored.result_body) == (
        Status.IN_PROGRESS, 2, None)
    assert await store.get_webhook("r") is None

    assert await store.complete("r", ok(), NOW + 4, attempt_id=current.attempt_id,
                                attempt_outcome="ok")
    assert not await store.complete("r", ok(b"again"), NOW + 5,
                                    attempt_id=current.attempt_id)
    assert not await store.requeue("r", current.attempt_id, NOW + 5, "lost", None)
    stored = await store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.result_body, stored.finished_at) == (
        Status.COMPLETED, b'{"ok": true}', NOW + 4)
    assert (stored.result_headers, stored.billable_units) == (
        {"x-fal-billable-units": "2"}, 2.0)
    attempts = await store.get_attempts("r")
    assert [(a["attempt"], a["outcome"], a["error_type"], a["finished_at"])
            for a in attempts] == [(1, "lost", "runner_disconnected", NOW + 1),
                                   (2, "ok", None, NOW + 4)]


async def test_a_waiting_request_completes_without_an_attempt(store: Store) -> None:
    await store.add_request(queued("r"))
    failure = Outcome(status=499, body=b"{}", error="cancelled", error_type="cancelled")
    assert await store.complete("r", failure, NOW)
    assert not await store.complete("r", failure, NOW)
    stored = await store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.result_status, stored.error_type) == (
        Status.COMPLETED, 499, "cancelled")
    assert await claim(store) == []


async def test_a_request_may_end_without_keeping_its_input_and_result(store: Store) -> None:
    await add(store, queued("frame"), queued("kept", created_at=T0 + 1))
    frame, kept = await claim(store)
    assert await store.complete("frame", ok(), NOW, attempt_id=frame.attempt_id,
                                keep_io=False)
    assert await store.complete("kept", ok(), NOW, attempt_id=kept.attempt_id)
    dropped = await store.get_request("frame")
    assert dropped is not None
    assert (dropped.payload, dropped.result_body, dropped.result_status) == (b"", None, 200)
    stored = await store.get_request("kept")
    assert stored is not None
    assert (stored.payload, stored.result_body) == (b'{"id": "kept"}', b'{"ok": true}')


async def test_requeue_puts_the_request_back_for_a_new_attempt(store: Store) -> None:
    await store.add_request(queued("r", saved_state=None))
    [first] = await claim(store)
    await store.set_live("r", {"step": 1, "total": 2}, b"partial")
    assert await store.requeue("r", first.attempt_id, NOW + 1, "interrupted", None,
                               {"saved_state": {"upstream": "u1"}})
    stored = await store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.options) == (Status.IN_QUEUE, {"saved_state": {"upstream": "u1"}})
    assert await store.get_live("r") == (None, None)
    assert await store.queue_position("r") == 0
    [second] = await claim(store, now=NOW + 2)
    assert (second.request.attempts, second.request.started_at) == (2, NOW)
    assert second.request.options == {"saved_state": {"upstream": "u1"}}
    assert [a["attempt_id"] for a in await store.get_attempts("r")] == [
        first.attempt_id, second.attempt_id]


async def test_writes_apply_in_order_and_a_failed_one_blocks_nothing(store: Store) -> None:
    await store.add_request(queued("r"))
    store.set_options("r", {"n": 1})
    duplicate = store.add_request(queued("r"))
    store.set_options("r", {"n": 2})
    store.request_cancel("r")
    last = store.add_request(queued("after"))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await asyncio.wait_for(duplicate, WAIT)
    await asyncio.wait_for(last, WAIT)
    stored = await store.get_request("r")
    assert stored is not None and stored.options == {"n": 2}
    assert await store.get_request("after") is not None


async def test_a_write_whose_caller_stopped_waiting_still_applies_in_order(
        store: Store) -> None:
    await store.add_request(queued("r"))
    store.set_options("r", {"n": 1}).cancel()
    store.add_request(queued("s", created_at=T0 + 1)).cancel()
    assert ids(await claim(store)) == ["r", "s"]
    stored = await store.get_request("r")
    assert stored is not None and stored.options == {"n": 1}


# Webhooks

async def test_completing_queues_the_webhook_in_the_same_transaction(store: Store) -> None:
    await add(store, queued("ran"), queued("never_ran", created_at=T0 + 1))
    [ran] = await claim(store, limit=1)
    assert await store.complete("ran", ok(), NOW + 1, HOOK, attempt_id=ran.attempt_id)
    assert await store.complete("never_ran", ok(), NOW + 2, HOOK)
    hook = await store.get_webhook("ran")
    assert hook is not None
    assert (hook.url, hook.user_id, hook.state, hook.attempts, hook.tries) == (
        HOOK.url, HOOK.user_id, "pending", 0, 0)
    assert hook.gateway_request_id == ran.attempt_id
    assert (hook.created_at, hook.next_attempt_at) == (NOW + 1, NOW + 1)
    other = await store.get_webhook("never_ran")
    assert other is not None and other.gateway_request_id == "never_ran"
    assert await store.next_webhook_due() == NOW + 1


async def test_a_webhook_is_claimed_under_a_lease(
        store: Store, open_peer: Peer) -> None:
    await store.add_request(queued("r"))
    assert await store.complete("r", ok(), NOW, HOOK)
    [hook] = await store.claim_due_webhooks(NOW, 10, 60)
    assert (hook.request_id, hook.state, hook.attempts, hook.tries) == ("r", "delivering", 1, 1)
    assert hook.next_attempt_at is None
    assert await store.next_webhook_due() == NOW + 60
    peer = await open_peer(store)
    assert await peer.claim_due_webhooks(NOW + 59, 10, 60) == []  # its lease holds
    assert not await peer.redeliver_webhook("r", NOW + 59)

    # The delivering gateway died: another claims it; the lost attempt is not a try.
    [again] = await peer.claim_due_webhooks(NOW + 61, 10, 60)
    assert (again.state, again.attempts, again.tries) == ("delivering", 2, 1)
    attempts = await store.get_webhook_attempts("r")
    assert [(a.attempt, a.started_at, a.finished_at) for a in attempts] == [
        (1, NOW, NOW + 61), (2, NOW + 61, None)]
    assert attempts[0].error is not None and "interrupted" in attempts[0].error

    await peer.end_webhook_attempt("r", WebhookAttempt(2, NOW + 61, NOW + 62, 200, None, 1.0),
                                   "delivered", None)
    delivered = await store.get_webhook("r")
    assert delivered is not None
    assert (delivered.state, delivered.delivered_at) == ("delivered", NOW + 62)
    assert (await store.get_webhook_attempts("r"))[1].status_code == 200
    assert await store.next_webhook_due() is None
    assert await store.redeliver_webhook("r", NOW + 100)
    redelivered = await store.get_webhook("r")
    assert redelivered is not None
    assert (redelivered.state, redelivered.tries, redelivered.next_attempt_at) == (
        "pending", 0, NOW + 100)


async def test_releasing_webhook_leases_makes_interrupted_deliveries_due(
        store: Store) -> None:
    await add(store, queued("a"), queued("b", created_at=T0 + 1))
    for i, name in enumerate(("a", "b")):
        await store.complete(name, ok(), NOW + i, HOOK)
    assert len(await store.claim_due_webhooks(NOW, 10, 600)) == 1
    assert await store.release_webhook_leases() == 1
    [again, other] = await store.claim_due_webhooks(NOW + 1, 10, 600)
    assert (again.request_id, again.attempts, again.tries) == ("a", 2, 1)
    assert (other.request_id, other.attempts, other.tries) == ("b", 1, 1)


async def test_concurrent_webhook_claims_never_share_a_webhook(
        store: Store, open_peer: Peer) -> None:
    await add(store, *(queued(f"r{i:02}", created_at=T0 + i) for i in range(20)))
    for i in range(20):
        store.complete(f"r{i:02}", ok(), NOW + i, HOOK)
    await store.set_options("r00", {})  # after every completion
    peers = [await open_peer(store), await open_peer(store)]
    batches = await asyncio.gather(*(peers[i % 2].claim_due_webhooks(NOW + 100, 3, 60)
                                     for i in range(10)))
    claimed = [hook.request_id for batch in batches for hook in batch]
    assert sorted(claimed) == [f"r{i:02}" for i in range(20)]


# Secrets, purge

async def test_a_secret_is_put_once(store: Store,
                                    open_peer: Peer) -> None:
    assert await store.get_secret("signing") is None
    peer = await open_peer(store)
    values = await asyncio.gather(store.put_secret_once("signing", b"first"),
                                  peer.put_secret_once("signing", b"second"))
    assert values[0] == values[1] in (b"first", b"second")
    assert await store.put_secret_once("signing", b"third") == values[0]
    assert await store.get_secret("signing") == values[0]


async def test_a_secret_is_replaced_only_from_the_value_it_was_read_as(
        store: Store, open_peer: Peer) -> None:
    await store.put_secret_once("keys", b"v1")
    peer = await open_peer(store)
    # Two gateways rotating at once from v1: one swap wins, the other is refused.
    swapped = await asyncio.gather(store.replace_secret("keys", b"v1", b"v2-a"),
                                   peer.replace_secret("keys", b"v1", b"v2-b"))
    assert sorted(swapped) == [False, True]
    winner = b"v2-a" if swapped[0] else b"v2-b"
    assert await peer.get_secret("keys") == winner
    assert not await store.replace_secret("keys", b"v1", b"v3")
    assert await store.replace_secret("keys", winner, b"v3")
    assert await store.get_secret("keys") == b"v3"
    assert not await store.replace_secret("missing", b"", b"x")
    assert await store.get_secret("missing") is None


async def test_a_secret_is_set_over_what_is_there_and_deleted(store: Store,
                                                               open_peer: Peer) -> None:
    peer = await open_peer(store)
    await store.set_secret("app/A", b"v1")
    await peer.set_secret("app/A", b"v2")
    assert await store.get_secret("app/A") == b"v2"
    assert await peer.delete_secret("app/A")
    assert await store.get_secret("app/A") is None
    assert not await store.delete_secret("app/A")
    await store.set_secret("app/A", b"v3")  # set again after its deletion
    assert await peer.get_secret("app/A") == b"v3"


async def test_secrets_are_listed_by_prefix_in_name_order(store: Store) -> None:
    for name in ("app/B", "app/A", "app_x", "apps/C", "server"):
        await store.set_secret(name, name.encode())
    # "_" is literal in a prefix (not LIKE's any character).
    assert await store.list_secrets("app/") == [("app/A", b"app/A"), ("app/B", b"app/B")]
    assert await store.list_secrets("app_") == [("app_x", b"app_x")]
    assert await store.list_secrets("nothing/") == []
    assert [name for name, _ in await store.list_secrets("")] == [
        "app/A", "app/B", "app_x", "apps/C", "server"]


async def test_purge_removes_old_finished_requests_and_only_what_is_theirs(
        store: Store) -> None:
    old = [queued(f"old{i:04}", created_at=T0 + i) for i in range(1203)]
    await add(store, *old, queued("recent"), queued("running"), queued("waiting"))
    for r in old:
        store.complete(r.id, ok(), NOW)
    [running] = await claim(store, limit=1)  # old0000 is done: this is "recent"
    assert running.request.id == "recent"
    store.add_logs("old0000", [LogEntry("bye", "INFO", "app", NOW)])
    store.add_logs("recent", [LogEntry("hi", "INFO", "app", NOW)])
    assert await store.complete("recent", ok(), NOW + 50, HOOK,
                                attempt_id=running.attempt_id)
    await store.complete("old0001", ok(), NOW, HOOK)  # already done: no webhook
    await store.put_secret_once("kept", b"x")

    assert await store.purge_finished_before(NOW + 10) == 1203
    assert await store.get_request("old0000") is None
    assert await store.get_logs("old0000") == []
    assert [e.message for e in await store.get_logs("recent")] == ["hi"]
    assert len(await store.get_attempts("recent")) == 1
    assert await store.get_webhook("recent") is not None
    assert await store.get_request("waiting") is not None
    assert await store.purge_finished_before(NOW + 10) == 0
    assert await store.purge_finished_before(NOW + 60) == 1
    assert await store.get_attempts("recent") == []
    assert await store.get_webhook("recent") is None
    assert await store.get_secret("kept") == b"x"


# What readers see

async def test_queue_position_counts_waiting_requests_of_the_app_ahead(store: Store) -> None:
    await add(store, queued("a", created_at=T0), queued("b", endpoint="o/a/x",
              created_at=T0 + 1), queued("c", created_at=T0 + 1),
              queued("urgent", priority=-1, created_at=T0 + 5),
              queued("elsewhere", app="o/b", endpoint="o/b"))
    positions = {r: await store.queue_position(r) for r in ("urgent", "a", "b", "c",
                                                             "elsewhere")}
    assert positions == {"urgent": 0, "a": 1, "b": 2, "c": 3, "elsewhere": 0}
    assert await store.waiting(["o/a", "o/a/x"]) == 4
    assert await store.waiting(["o/a/x"]) == 1
    assert await store.waiting([]) == 0
    await claim(store, ("o/a",), limit=2)
    assert await store.queue_position("a") is None
    assert await store.queue_position("b") == 0
    assert await store.queue_position("unknown") is None


async def test_logs_are_read_from_an_offset(store: Store) -> None:
    await store.add_request(queued("r"))
    first = [LogEntry(f"line {i}", "INFO", "app", NOW + i) for i in range(3)]
    store.add_logs("r", first)
    await store.add_logs("r", [LogEntry("warn\x00ing", "WARNING", "gateway", NOW + 9),
                               LogEntry("last", "ERROR", "app", NOW + 10)])
    logs = await store.get_logs("r")
    assert logs[:3] == first
    assert [e.message for e in logs] == ["line 0", "line 1", "line 2", logs[3].message, "last"]
    assert logs[3].message.startswith("warn") and logs[3].level == "WARNING"
    assert [e.message for e in await store.get_logs("r", 3)][1:] == ["last"]
    assert await store.get_logs("r", 5) == []
    assert await store.get_logs("unknown") == []


async def test_live_progress_and_partial_of_a_running_request(store: Store) -> None:
    await store.add_request(queued("r"))
    await store.set_live("r", {"step": 1}, None)
    assert await store.get_live("r") == (None, None)  # not running: nothing to show
    await claim(store)
    await store.set_live("r", {"step": 1, "total": 4}, None)
    assert await store.get_live("r") == ({"step": 1, "total": 4}, None)
    await store.set_live("r", None, b"\x00partial")
    assert await store.get_live("r") == ({"step": 1, "total": 4}, b"\x00partial")
    assert await store.get_live("unknown") == (None, None)


async def test_keys_and_usage(store: Store) -> None:
    await store.add_key(KeyRecord("k1", "h" * 64, "API", "ci", T0, max_concurrency=2))
    store.add_key(KeyRecord("k2", "g" * 64, "ADMIN", "", T0 + 1))
    store.set_key_concurrency("k1", 5)
    await store.revoke_key("k2", NOW)
    k1, k2 = await store.list_keys()
    assert (k1.id, k1.max_concurrency, k1.revoked_at) == ("k1", 5, None)
    assert (k2.id, k2.scope, k2.revoked_at) == ("k2", "ADMIN", NOW)

    await add(store, queued("a", key="k1"), queued("b", key="k1", created_at=T0 + 1))
    a, b = await claim(store)
    await store.complete("a", ok(), NOW + 10, attempt_id=a.attempt_id)
    await store.complete("b", Outcome(500, b"{}", "boom", "internal"), NOW + 20,
                         attempt_id=b.attempt_id)
    [row] = await store.usage(NOW, NOW + 21)
    assert (row.key_id, row.endpoint_id, row.requests, row.failed, row.attempts) == (
        "k1", "o/a", 2, 1, 2)
    assert (row.queue_seconds, row.run_seconds, row.billable_units) == (
        pytest.approx(199), pytest.approx(30), 2.0)
    assert await store.usage(NOW, NOW + 10) == []


# Deployed apps

async def deploy(store: Store, app_id: str = "o/a", bundle: bytes = b"bundle",
                 created_at: float = T0) -> AppRevision:
    return await store.add_app_revision(app_id, "app.py::App", bundle, created_at)


async def test_deploys_are_numbered_and_the_latest_is_current(store: Store,
                                                              open_peer: Peer) -> None:
    first = await store.add_app_revision("o/a", "src/app.py::First", b"one", T0)
    assert first == AppRevision("o/a", 1, "src/app.py::First",
                                hashlib.sha256(b"one").hexdigest(), 3, T0)
    second = await deploy(store, bundle=b"two", created_at=T0 + 1)
    third = await deploy(store, bundle=b"three", created_at=T0 + 2)
    assert (second.revision, third.revision) == (2, 3)
    peer = await open_peer(store)
    assert await peer.app_revisions("o/a") == [first, second, third]
    assert await peer.current_app_revisions() == {"o/a": third}
    assert await store.app_revisions("o/unknown") == []


async def test_a_rollback_is_current_and_the_next_deploy_numbers_past_the_highest(
        store: Store) -> None:
    first, _, third = [await deploy(store, created_at=T0 + i) for i in range(3)]
    assert await store.set_current_app_revision("o/a", 1) == first
    assert await store.current_app_revisions() == {"o/a": first}
    fourth = await deploy(store)
    assert fourth.revision == 4
    assert await store.current_app_revisions() == {"o/a": fourth}
    assert await store.set_current_app_revision("o/a", 3) == third  # forward again
    assert await store.current_app_revisions() == {"o/a": third}


async def test_setting_a_missing_revision_current_changes_nothing(store: Store) -> None:
    _, second = await deploy(store), await deploy(store)
    assert await store.set_current_app_revision("o/a", 3) is None
    assert await store.set_current_app_revision("o/a", 0) is None
    assert await store.set_current_app_revision("o/unknown", 1) is None
    assert await store.current_app_revisions() == {"o/a": second}
    assert await store.app_revisions("o/unknown") == []
    assert (await deploy(store)).revision == 3


async def test_a_bundle_comes_back_byte_for_byte(store: Store, open_peer: Peer) -> None:
    small = b"\x00\x1f\x8b binary \xff\x00"
    large = random.Random(0).randbytes(5 * 2**20 + 7)
    await deploy(store, bundle=small)
    revision = await deploy(store, bundle=large)
    assert (revision.size, revision.digest) == (len(large), hashlib.sha256(large).hexdigest())
    peer = await open_peer(store)
    assert await peer.app_bundle("o/a", 2) == large
    assert await peer.app_bundle("o/a", 1) == small
    assert await store.app_bundle("o/a", 3) is None
    assert await store.app_bundle("o/unknown", 1) is None


async def test_current_revisions_are_those_of_every_deployed_app(store: Store) -> None:
    a1, _ = await deploy(store, "o/a"), await deploy(store, "o/a")
    b1 = await deploy(store, "o/b")
    await deploy(store, "other/c")
    c2 = await deploy(store, "other/c")
    await store.set_current_app_revision("o/a", 1)
    assert await store.current_app_revisions() == {"o/a": a1, "o/b": b1, "other/c": c2}


async def test_deleting_an_app_removes_it_all_and_a_new_deploy_starts_at_1(
        store: Store) -> None:
    for _ in range(2):
        await deploy(store, "o/a")
    kept = await deploy(store, "o/b")
    assert await store.delete_app("o/a")
    assert await store.app_revisions("o/a") == []
    assert await store.app_bundle("o/a", 1) is None
    assert await store.current_app_revisions() == {"o/b": kept}
    assert await store.set_current_app_revision("o/a", 1) is None
    assert not await store.delete_app("o/a")
    assert not await store.delete_app("o/unknown")
    assert (await deploy(store, "o/a")).revision == 1
    assert await store.app_revisions("o/b") == [kept]


async def test_deploys_of_one_app_at_once_each_get_a_number(store: Store,
                                                            open_peer: Peer) -> None:
    peer = await open_peer(store)
    deploys = await asyncio.gather(*(gateway.add_app_revision("o/a", f"app.py::V{i}", b"x", T0)
                                     for i, gateway in enumerate((store, peer) * 4)))
    in_order = sorted(deploys, key=lambda d: d.revision)
    assert [d.revision for d in in_order] == list(range(1, 9))
    assert await peer.app_revisions("o/a") == in_order
    assert await store.current_app_revisions() == {"o/a": in_order[-1]}


async def test_deploys_and_a_delete_at_once_leave_no_revision_behind(
        store: Store, open_peer: Peer) -> None:
    peer = await open_peer(store)
    await deploy(store)
    await asyncio.gather(*(deploy(gateway) for gateway in (store, peer) * 3),
                         peer.delete_app("o/a"), *(deploy(gateway) for gateway in (store, peer)))
    # What is left is the deploys made after the delete, numbered from 1, the newest current
    # (none, had the delete come last): no revision of the app before it.
    revisions = await store.app_revisions("o/a")
    assert [r.revision for r in revisions] == list(range(1, len(revisions) + 1))
    current = (await store.current_app_revisions()).get("o/a")
    assert current == (revisions[-1] if revisions else None)


# Schema and migrations

async def test_the_schema_is_at_the_latest_migration_and_reopens(
        store: Store, tmp_path: Path) -> None:
    kind = "postgres" if store.shared else "sqlite"
    assert await store.schema_version() == latest_migration(kind)
    await store.add_request(queued("kept"))
    await store.close()
    again = open_store(store.url if isinstance(store, PostgresStore) else None, tmp_path)
    await again.open()
    try:
        assert await again.schema_version() == latest_migration(kind)
        assert await again.get_request("kept") is not None
    finally:
        await again.close()


async def test_gateways_opening_a_new_database_together_migrate_it_once(
        postgres_url: str, tmp_path: Path) -> None:
    stores = [open_store(postgres_url, tmp_path) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [latest_migration("postgres")] * 4
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_database_of_the_previous_release_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "openfal.db"
    shutil.copy(RELEASE_DB, path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.schema_version() == latest_migration("sqlite")
        queued = await store.get_request("queued")
        assert queued is not None and queued.key_id == "k1"
        assert [k.id for k in await store.list_keys()] == ["k1"]
        # Left running by the old server: its lease lapsed at the upgrade.
        [lapsed] = await store.lapsed(T0, 10)
        assert (lapsed.request.id, lapsed.attempt_id) == ("running", "att-running-1")
        assert await store.requeue("running", "att-running-1", NOW, "lost", None)
        [queued_claim, again] = await claim(store, ("openfal/echo",),
                                            now=queued.created_at + 1)
        assert (queued_claim.request.id, again.request.id) == ("queued", "running")
        assert again.request.attempts == 2
        # Its webhook was being delivered: due again at once.
        [hook] = await store.claim_due_webhooks(queued.created_at, 10, 60)
        assert (hook.request_id, hook.attempts, hook.tries) == ("done", 2, 1)
        assert (await store.add_app_revision("o/a", "app.py::App", b"x", NOW)).revision == 1
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_migration("sqlite")


async def test_a_postgresql_database_of_the_schema_before_upgrades(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                           " applied_at timestamptz NOT NULL DEFAULT now())")
        for number, script in migrations(PG_MIGRATIONS)[:-1]:
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
        await conn.execute("INSERT INTO secrets (name, value) VALUES ('kept', 'x')")
    finally:
        await conn.close()
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        assert await store.schema_version() == latest_migration("postgres")
        assert await store.get_secret("kept") == b"x"
        assert (await store.add_app_revision("o/a", "app.py::App", b"x", NOW)).revision == 1
    finally:
        await store.close()


# Events

async def test_a_process_does_not_hear_its_own_events(store: Store) -> None:
    heard: list[Event] = []
    store.notifier.listen(heard.append)
    store.notifier.publish(WorkAdded("o/a"))
    await store.set_options("unknown", {})  # written after the event was sent
    assert heard == []


async def test_a_gateway_does_not_hear_its_own_events_come_back(
        pg_store: PostgresStore, open_peer: Peer) -> None:
    other = await open_peer(pg_store)
    heard: list[Event] = []
    stop = pg_store.notifier.listen(heard.append)
    at_other = asyncio.Event()
    other.notifier.listen(lambda e: at_other.set())
    pg_store.notifier.publish(WorkAdded("o/a"))
    await asyncio.wait_for(at_other.wait(), WAIT)
    # Sent after the first arrived, so delivered after it: had it come back, it would be here.
    marker = asyncio.Event()
    pg_store.notifier.listen(lambda e: e == CancelRequested("marker") and marker.set())
    other.notifier.publish(CancelRequested("marker"))
    await asyncio.wait_for(marker.wait(), WAIT)
    assert heard == [CancelRequested("marker")]
    stop()
    other.notifier.publish(CancelRequested("unheard"))
    await delivered(pg_store, other, CancelRequested("marker 2"))
    assert heard == [CancelRequested("marker")]


async def delivered(listener_store: Store, sender: Store, event: Event) -> None:
    """Publish ``event`` on ``sender`` until ``listener_store`` hears it (events published
    while a LISTEN connection reconnects are lost: they are hints)."""
    arrived = asyncio.Event()
    stop = listener_store.notifier.listen(lambda e: e == event and arrived.set())

    async def until_heard() -> None:
        while not arrived.is_set():
            sender.notifier.publish(event)
            await asyncio.sleep(0.2)
            if not arrived.is_set():
                await asyncio.sleep(0.8)
    try:
        await asyncio.wait_for(until_heard(), WAIT)
    finally:
        stop()


async def test_events_reach_other_gateways(pg_store: PostgresStore, open_peer: Peer) -> None:
    store = pg_store
    other = await open_peer(store)
    heard: list[Event] = []
    got_all = asyncio.Event()

    def hear(event: Event) -> None:
        heard.append(event)
        if len(heard) == 3:
            got_all.set()
    other.notifier.listen(hear)
    big = PartialProduced("r", bytes(range(256)) * 400)  # 100 kB: through the events table
    for event in (WorkAdded("o/a"), big, CancelRequested("r")):
        store.notifier.publish(event)
    await asyncio.wait_for(got_all.wait(), WAIT)
    assert heard == [WorkAdded("o/a"), big, CancelRequested("r")]


async def test_a_notification_follows_the_writes_made_before_it(
        pg_store: PostgresStore, open_peer: Peer) -> None:
    store = pg_store
    other = await open_peer(store)
    seen = asyncio.get_running_loop().create_future()

    def on_work(event: Event) -> None:
        if isinstance(event, WorkAdded) and not seen.done():
            seen.set_result(asyncio.ensure_future(other.waiting(["o/a"])))
    other.notifier.listen(on_work)
    store.add_request(queued("r"))
    store.notifier.publish(WorkAdded("o/a"))
    assert await (await asyncio.wait_for(seen, WAIT)) == 1


async def test_events_flow_again_after_the_listen_connection_drops(
        pg_store: PostgresStore, open_peer: Peer, postgres_server: PostgresServer) -> None:
    store = pg_store
    other = await open_peer(store)
    database = store.url.rpartition("/")[2]
    assert postgres_server.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE application_name = 'openfal-listen' AND datname = '{database}'") == "2"
    await delivered(other, store, CancelRequested("after the drop"))


# Opening stores

def test_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(None, tmp_path), SQLiteStore)
    assert open_store(None, tmp_path).path == tmp_path / "openfal.db"  # type: ignore[attr-defined]
    absolute = open_store(f"sqlite://{tmp_path}/other.db", Path("/elsewhere"))
    assert absolute.path == tmp_path / "other.db"  # type: ignore[attr-defined]
    relative = open_store("sqlite://mine.db", tmp_path)
    assert relative.path == tmp_path / "mine.db"  # type: ignore[attr-defined]
    for url in ("postgresql://u:secret@db.example:5433/openfal", "postgres://db/openfal"):
        assert open_store(url, tmp_path).shared
    for bad, message in (("mysql://u:secret@h/db", "sqlite:// or postgresql://"),
                         ("postgresql://u:secret@h:port/db", "port"),
                         ("openfal.db", "sqlite:// or postgresql://")):
        with pytest.raises(ConfigError, match=message) as error:
            open_store(bad, tmp_path)
        assert "secret" not in str(error.value)
    with pytest.raises(ConfigError, match="durability"):
        open_store(None, tmp_path, "sometimes")


def test_a_postgresql_store_without_asyncpg_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.delitem(sys.modules, "openfal.store.postgres", raising=False)
    with pytest.raises(ConfigError, match=r"openfal\[postgres\]"):
        open_store("postgresql://localhost/openfal", tmp_path)


async def test_an_unreachable_database_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        store = open_store(f"postgresql://u:secret@127.0.0.1:{port}/openfal", tmp_path)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}") as error:
            await store.open()
    assert "secret" not in str(error.value)
    assert "\n" not in str(error.value)


# Request history and metrics
def ids_of(records: list[RequestRecord]) -> list[str]:
    return [record.id for record in records]


async def pages(store: Store, query: HistoryQuery) -> list[list[str]]:
    """Every page of a listing, each continuing after the last request of the one before."""
    found: list[list[str]] = []
    while True:
        page = await store.history(query)
        if not page:
            return found
        found.append(ids_of(page))
        query.before = (page[-1].created_at, page[-1].id)


async def test_history_pages_newest_first_without_gaps_or_repeats(store: Store) -> None:
    # Three requests share each instant: the id breaks the tie, across page boundaries too.
    await add(store, *(queued(f"r{i:02}", created_at=T0 + i // 3) for i in range(20)))
    newest_first = sorted((f"r{i:02}" for i in range(20)),
                          key=lambda rid: (int(rid[1:]) // 3, rid), reverse=True)
    listed = await pages(store, HistoryQuery(start=T0, limit=7))
    assert [len(page) for page in listed] == [7, 7, 6]
    assert [rid for page in listed for rid in page] == newest_first
    # A request arriving between two pages appears on no later page (it is newer).
    first = await store.history(HistoryQuery(start=T0, limit=5))
    await store.add_request(queued("late", created_at=T0 + 100))
    rest = await pages(store, HistoryQuery(start=T0, limit=5,
                                           before=(first[-1].created_at, first[-1].id)))
    assert ids_of(first) + [rid for page in rest for rid in page] == newest_first


async def test_history_filters_by_time_endpoint_and_key(store: Store) -> None:
    await add(store, queued("old", created_at=T0 - 10), queued("a", created_at=T0, key="k1"),
              queued("b", endpoint="o/b", created_at=T0 + 1, key="k1"),
              queued("c", created_at=T0 + 2, key="k2"), queued("anon", created_at=T0 + 3),
              queued("edge", created_at=T0 + 5))
    assert ids_of(await store.history(HistoryQuery(start=T0, end=T0 + 5))) == [
        "anon", "c", "b", "a"]
    assert ids_of(await store.history(HistoryQuery(start=T0 - 10, end=T0 + 1))) == [
        "a", "old"]
    assert ids_of(await store.history(HistoryQuery(start=T0, endpoint_id="o/a"))) == [
        "edge", "anon", "c", "a"]
    assert ids_of(await store.history(HistoryQuery(start=T0, key_id="k1"))) == ["b", "a"]
    assert ids_of(await store.history(HistoryQuery(start=T0, key_id="k1",
                                                   endpoint_id="o/b"))) == ["b"]


async def test_history_filters_by_state(store: Store) -> None:
    await add(store, *(queued(name, created_at=T0 + i) for i, name in enumerate(
        ["done", "failed", "running", "cancelled", "waiting"])))
    done, failed, _ = await claim(store, limit=3)
    assert await store.complete("done", ok(), NOW, attempt_id=done.attempt_id)
    assert await store.complete("failed", Outcome(400, b'{"detail": "no"}', "no", "bad"), NOW,
                                attempt_id=failed.attempt_id)
    assert await store.complete("cancelled", Outcome(499, b"{}", "cancelled", "cancelled"),
                                NOW)

    async def listed(status: HistoryStatus) -> list[str]:
        return ids_of(await store.history(HistoryQuery(start=T0, status=status)))

    assert await listed(HistoryStatus.COMPLETED) == ["done"]
    assert await listed(HistoryStatus.FAILED) == ["cancelled", "failed"]
    assert await listed(HistoryStatus.IN_PROGRESS) == ["running"]
    assert await listed(HistoryStatus.IN_QUEUE) == ["waiting"]
    states = {record.id: record.history_status
              for record in await store.history(HistoryQuery(start=T0))}
    assert states == {"done": HistoryStatus.COMPLETED, "failed": HistoryStatus.FAILED,
                      "cancelled": HistoryStatus.FAILED, "running": HistoryStatus.IN_PROGRESS,
                      "waiting": HistoryStatus.IN_QUEUE}


async def test_dropping_payloads_keeps_the_rest_and_gives_the_body_once(store: Store) -> None:
    await add(store, queued("done"), queued("waiting", created_at=T0 + 1))
    [done] = await claim(store, limit=1)
    assert await store.complete("done", ok(b'{"out": 1}'), NOW, attempt_id=done.attempt_id)
    assert await store.drop_payloads("done") == b'{"out": 1}'
    assert await store.drop_payloads("done") is None
    dropped = await store.get_request("done")
    assert dropped is not None
    assert (dropped.payload, dropped.result_body) == (b"", None)
    assert (dropped.status, dropped.result_status, dropped.finished_at) == (
        Status.COMPLETED, 200, NOW)
    # An unfinished request keeps its input (a later attempt needs it); unknown: nothing.
    assert await store.drop_payloads("waiting") is None
    waiting = await store.get_request("waiting")
    assert waiting is not None and waiting.payload == b'{"id": "waiting"}'
    assert await store.drop_payloads("unknown") is None


async def test_unfinished_counts_and_webhook_backlog(store: Store) -> None:
    await add(store, *(queued(f"a{i}", created_at=T0 + i) for i in range(4)),
              *(queued(f"b{i}", endpoint="o/b", created_at=T0 + 10 + i) for i in range(2)))
    assert await store.webhook_backlog() == {"pending": 0, "delivering": 0}
    assert await store.unfinished_counts() == {("o/a", Status.IN_QUEUE): 4,
                                               ("o/b", Status.IN_QUEUE): 2}
    first, _ = await claim(store, limit=2)
    assert await store.complete(first.request.id, ok(), NOW, HOOK,
                                attempt_id=first.attempt_id)
    assert await store.complete("b0", ok(), NOW, HOOK)
    assert await store.unfinished_counts() == {("o/a", Status.IN_QUEUE): 2,
                                               ("o/a", Status.IN_PROGRESS): 1,
                                               ("o/b", Status.IN_QUEUE): 1}
    assert await store.webhook_backlog() == {"pending": 2, "delivering": 0}
    await store.claim_due_webhooks(NOW, 1, 60)
    assert await store.webhook_backlog() == {"pending": 1, "delivering": 1}
