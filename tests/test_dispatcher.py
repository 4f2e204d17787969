"""The dispatcher wakes waiting claims only when there may be work for them: every pool of a
server parks a claim, and waking them all for each finished request costs each of them a
store read (this was most of a direct run's CPU with the built-in apps loaded)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openfal.app.registry import Registry
from openfal.dispatcher.dispatcher import Dispatcher
from openfal.dispatcher.jobs import Priority
from openfal.runner.protocol import Result
from openfal.store.base import Mode, Status
from openfal.store.sqlite import SQLiteStore

ECHO = "openfal/echo"
IDLE = "openfal/idle-endpoint"


@pytest.fixture
async def dispatcher(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    registry = Registry()
    registry.add("openfal.models.echo::Echo")
    dispatcher = Dispatcher(store, registry, retention_seconds=3600)
    await dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()
        await store.close()


async def park(dispatcher: Dispatcher, worker_id: str, limit: int) -> asyncio.Task:
    """A claim for an endpoint with no work, parked until woken."""
    task = asyncio.ensure_future(dispatcher.claim(worker_id, [IDLE], limit, wait=60))
    while not any(p.worker_id == worker_id for p in dispatcher._parked):
        await asyncio.sleep(0)
    return task


async def run_to_the_end(dispatcher: Dispatcher, key_limit: int | None) -> None:
    """A direct run of a key, claimed by a worker with room and finished."""
    served, _ = dispatcher.registry.resolve(ECHO)
    options = {} if key_limit is None else {"key_limit": key_limit}
    job = dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, Mode.DIRECT,
                             Priority.DIRECT, options, key_id="key-1")
    done = await dispatcher.start_direct(job)
    reply = await dispatcher.claim("worker-echo", [ECHO], 1, wait=0)
    [assignment] = reply.assignments
    assert await dispatcher.finish(assignment.attempt_id,
                                   Result(job.id, 200, b'{"text": "hi"}'))
    assert (await done).status == 200


def woken(dispatcher: Dispatcher, worker_id: str) -> bool:
    return not any(p.worker_id == worker_id and not p.future.done()
                   for p in dispatcher._parked)


async def test_a_request_without_a_key_limit_wakes_no_other_claim(dispatcher) -> None:
    with_room = await park(dispatcher, "worker-with-room", limit=1)
    await run_to_the_end(dispatcher, key_limit=None)
    assert not woken(dispatcher, "worker-with-room")
    with_room.cancel()
    await asyncio.gather(with_room, return_exceptions=True)


async def test_a_freed_key_slot_wakes_only_claims_with_room(dispatcher) -> None:
    # A request held back by its key's limit may go once a request of that key ends: the
    # claims that could take it look again. Claims with no room only count what waits,
    # which the freed slot does not change.
    with_room = await park(dispatcher, "worker-with-room", limit=1)
    without_room = await park(dispatcher, "worker-without-room", limit=0)
    await run_to_the_end(dispatcher, key_limit=2)
    assert woken(dispatcher, "worker-with-room")
    assert not woken(dispatcher, "worker-without-room")
    without_room.cancel()
    await asyncio.gather(with_room, without_room, return_exceptions=True)


async def test_direct_runs_arriving_together_go_to_one_waiting_claim(dispatcher) -> None:
    # A worker with room for three waits on this gateway; three direct runs arriving before
    # it resumes are all handed to it (none is left to wait in the store for a claim).
    claiming = asyncio.ensure_future(dispatcher.claim("worker-echo", [ECHO], 3, wait=60))
    while not dispatcher._parked:
        await asyncio.sleep(0)
    served, _ = dispatcher.registry.resolve(ECHO)
    jobs = [dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, Mode.DIRECT,
                               Priority.DIRECT, {}) for _ in range(3)]
    for job in jobs:
        await dispatcher.start_direct(job)
    reply = await asyncio.wait_for(claiming, 10)
    assert sorted(a.request_id for a in reply.assignments) == sorted(j.id for j in jobs)
    for assignment in reply.assignments:
        assert await dispatcher.finish(assignment.attempt_id,
                                       Result(assignment.request_id, 200, b"{}"))


async def test_a_direct_run_takes_the_room_a_claim_under_way_has_left(dispatcher) -> None:
    # The claim asks the store (a queued request waits there); a direct run arriving
    # meanwhile waits on that claim instead of in the store, and takes its room left. With
    # no room left it waits in the store, and the next claim takes it.
    served, _ = dispatcher.registry.resolve(ECHO)

    def job(mode: Mode):
        return dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, mode,
                                  Priority.DIRECT if mode is Mode.DIRECT else Priority.NORMAL,
                                  {})

    async def claim_while_a_direct_run_arrives(limit: int) -> tuple[list[str], str]:
        queued = job(Mode.QUEUE)
        await dispatcher.submit(queued)
        claiming = asyncio.ensure_future(dispatcher.claim("worker-echo", [ECHO], limit, 60))
        while not dispatcher._claiming:
            await asyncio.sleep(0)
        direct = job(Mode.DIRECT)
        await dispatcher.start_direct(direct)
        reply = await asyncio.wait_for(claiming, 10)
        assert queued.id in [a.request_id for a in reply.assignments]
        for assignment in reply.assignments:
            await dispatcher.finish(assignment.attempt_id,
                                    Result(assignment.request_id, 200, b"{}"))
        return [a.request_id for a in reply.assignments], direct.id

    taken, direct_id = await claim_while_a_direct_run_arrives(limit=2)
    assert direct_id in taken

    taken, direct_id = await claim_while_a_direct_run_arrives(limit=1)
    assert direct_id not in taken
    reply = await asyncio.wait_for(dispatcher.claim("worker-echo", [ECHO], 1, 60), 10)
    assert [a.request_id for a in reply.assignments] == [direct_id]
    assert await dispatcher.finish(reply.assignments[0].attempt_id,
                                   Result(direct_id, 200, b"{}"))


async def test_a_claim_cancelled_under_way_leaves_its_direct_runs_to_the_next(
        dispatcher) -> None:
    # The worker of a claim asking the store goes away (its claim is cancelled): a direct
    # run that waited on that claim must not be claimed for it, but wait for the next one.
    served, _ = dispatcher.registry.resolve(ECHO)
    queued = dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, Mode.QUEUE,
                                Priority.NORMAL, {})
    await dispatcher.submit(queued)
    claiming = asyncio.ensure_future(dispatcher.claim("gone-worker", [ECHO], 2, 60))
    while not dispatcher._claiming:
        await asyncio.sleep(0)
    direct = dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, Mode.DIRECT,
                                Priority.DIRECT, {})
    await dispatcher.start_direct(direct)
    claiming.cancel()
    await asyncio.gather(claiming, return_exceptions=True)
    reply = await asyncio.wait_for(dispatcher.claim("worker-echo", [ECHO], 2, 60), 10)
    taken = [a.request_id for a in reply.assignments]
    assert direct.id in taken
    for assignment in reply.assignments:
        await dispatcher.finish(assignment.attempt_id, Result(assignment.request_id, 200, b"{}"))
    assert (await direct.done).status == 200


async def test_direct_runs_handed_to_a_claim_whose_worker_went_away_go_back(
        dispatcher) -> None:
    # A waiting claim is handed a direct run, but its worker went away before the answer
    # reached it (the worker API's claim route gives such an answer back): the run waits
    # again, and the next claim takes it.
    claiming = asyncio.ensure_future(dispatcher.claim("gone-worker", [ECHO], 2, 60))
    while not dispatcher._parked:
        await asyncio.sleep(0)
    served, _ = dispatcher.registry.resolve(ECHO)
    direct = dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, Mode.DIRECT,
                                Priority.DIRECT, {})
    await dispatcher.start_direct(direct)
    dispatcher.unanswered(await claiming)
    reply = await asyncio.wait_for(dispatcher.claim("worker-echo", [ECHO], 1, 60), 10)
    assert [a.request_id for a in reply.assignments] == [direct.id]
    assert await dispatcher.finish(reply.assignments[0].attempt_id,
                                   Result(direct.id, 200, b"{}"))
    assert (await direct.done).status == 200


def count_store_claims(dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The workers of the claims that asked the store from now on."""
    asked: list[str] = []
    claim = dispatcher.store.claim

    def counted(endpoint_ids, worker_id, **kwargs):
        asked.append(worker_id)
        return claim(endpoint_ids, worker_id, **kwargs)

    monkeypatch.setattr(dispatcher.store, "claim", counted)
    return asked


def queued_job(dispatcher: Dispatcher, options: dict | None = None):
    served, _ = dispatcher.registry.resolve(ECHO)
    return dispatcher.new_job(served, "/", b'{"prompt": "hi"}', {}, Mode.QUEUE,
                              Priority.NORMAL, options or {}, key_id="key-1")


async def test_a_queued_request_goes_straight_to_a_waiting_worker(dispatcher,
                                                                   monkeypatch) -> None:
    # A worker waits for work of the endpoint, so nothing waits before this request: it is
    # handed to that worker as it is stored, with no second write to claim it (the runner
    # starts while the row commits). Once submit returns, the row is committed, claimed.
    claiming = asyncio.ensure_future(dispatcher.claim("worker-echo", [ECHO], 1, wait=60))
    while not dispatcher._parked:
        await asyncio.sleep(0)
    asked = count_store_claims(dispatcher, monkeypatch)
    job = queued_job(dispatcher)
    await dispatcher.submit(job)
    stored = await dispatcher.store.get_request(job.id)
    assert stored is not None and stored.status is Status.IN_PROGRESS
    reply = await asyncio.wait_for(claiming, 10)
    assert [a.request_id for a in reply.assignments] == [job.id]
    assert asked == []
    assert await dispatcher.finish(reply.assignments[0].attempt_id,
                                   Result(job.id, 200, b'{"text": "hi"}'))
    finished = await dispatcher.store.get_request(job.id)
    assert finished is not None and finished.status is Status.COMPLETED


async def test_a_queued_request_with_a_key_limit_is_claimed_by_the_store(
        dispatcher, monkeypatch) -> None:
    # The store counts the key's running requests: the waiting worker is woken to claim.
    claiming = asyncio.ensure_future(dispatcher.claim("worker-echo", [ECHO], 1, wait=60))
    while not dispatcher._parked:
        await asyncio.sleep(0)
    asked = count_store_claims(dispatcher, monkeypatch)
    job = queued_job(dispatcher, {"key_limit": 1})
    await dispatcher.submit(job)
    reply = await asyncio.wait_for(claiming, 10)
    assert [a.request_id for a in reply.assignments] == [job.id]
    assert asked == ["worker-echo"]
    assert await dispatcher.finish(reply.assignments[0].attempt_id, Result(job.id, 200, b"{}"))


async def test_a_queued_request_handed_to_a_worker_that_went_away_waits_again(
        dispatcher) -> None:
    claiming = asyncio.ensure_future(dispatcher.claim("gone-worker", [ECHO], 1, wait=60))
    while not dispatcher._parked:
        await asyncio.sleep(0)
    job = queued_job(dispatcher)
    await dispatcher.submit(job)
    dispatcher.unanswered(await claiming)
    reply = await asyncio.wait_for(dispatcher.claim("worker-echo", [ECHO], 1, wait=60), 10)
    assert [a.request_id for a in reply.assignments] == [job.id]
    assert await dispatcher.finish(reply.assignments[0].attempt_id, Result(job.id, 200, b"{}"))
    finished = await dispatcher.store.get_request(job.id)
    assert finished is not None and finished.status is Status.COMPLETED
