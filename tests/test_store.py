"""The SQLite store's writer: group commits, and surviving a failed transaction."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from openfal.store.base import Mode, RequestRecord, Status
from openfal.store.sqlite import SQLiteStore


def record(request_id: str, created_at: float | None = None) -> RequestRecord:
    return RequestRecord(id=request_id, app_id="o/a", endpoint_id="o/a", path="/",
                         mode=Mode.QUEUE, status=Status.IN_QUEUE, payload=b"{}",
                         created_at=time.time() if created_at is None else created_at)


async def test_writes_after_a_transaction_sqlite_ended_itself_still_commit(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        def ends_transaction_then_fails(conn: sqlite3.Connection) -> None:
            # As SQLite does on some errors (busy, disk full): no transaction is left.
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")

        assert store._writer is not None
        failing = store._writer.submit(ends_transaction_then_fails)
        with pytest.raises(sqlite3.OperationalError):
            await asyncio.wait_for(failing, 10)
        await asyncio.wait_for(store.add_request(record("after")), 10)
        assert (await store.get_request("after")) is not None
    finally:
        await store.close()


async def test_many_writes_commit_in_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        await asyncio.gather(*(store.add_request(record(f"r{i}", float(i))) for i in range(500)))
        claims = await store.claim(["o/a"], "worker", limit=500, lease_seconds=30,
                                   now=time.time())
        assert [c.request.id for c in claims] == [f"r{i}" for i in range(500)]
    finally:
        await store.close()
