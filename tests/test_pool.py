"""An app's pool of runners claims work as soon as it has room: a slot freed while a claim
is on its way must not be missed (the pool would sit out its whole room-poll interval while
requests wait)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from openfal.worker import pool as pool_module
from openfal.worker.link import ClaimReply
from openfal.worker.pool import AppPool
from openfal.worker.runners import RunnerHandle


class SlotFreedDuringClaim:
    """A work link whose claim, while it is answered, sees the runner's one request end
    (its result arriving between the claim leaving and its answer), and says one request
    still waits."""

    def __init__(self, pool_holder: list[AppPool]):
        self.pool_holder = pool_holder
        self.runner: RunnerHandle | None = None
        self.limits: list[int] = []

    async def claim(self, worker_id: str, endpoint_ids: list[str], limit: int,
                    wait: float, revision: int | None = None) -> ClaimReply:
        self.limits.append(limit)
        assert self.runner is not None
        self.runner.in_flight.clear()
        self.pool_holder[0].room_changed()
        return ClaimReply([], waiting=1)


def busy_pool(link: object) -> tuple[AppPool, RunnerHandle]:
    """A pool of one runner with one slot, taken."""
    app = SimpleNamespace(
        cls=SimpleNamespace(max_multiplexing=1, min_concurrency=0, max_concurrency=1,
                            keep_alive=10.0),
        app_id="openfal/slow", ref="unused", revision=None,
        endpoint_ids=lambda: ["openfal/slow"])
    runner = RunnerHandle("openfal/slow", "unused", max_multiplexing=1)
    runner.ready = True
    runner.in_flight["busy"] = object()  # type: ignore[assignment]
    pool = AppPool(app, SimpleNamespace(link=link, id="worker-1"))  # type: ignore[arg-type]
    pool.runners[runner.id] = runner
    return pool, runner


async def test_a_slot_freed_during_a_claim_is_used_at_once(monkeypatch) -> None:
    monkeypatch.setattr(pool_module, "ROOM_POLL_SECONDS", 60.0)
    holder: list[AppPool] = []
    link = SlotFreedDuringClaim(holder)
    pool, runner = busy_pool(link)
    link.runner = runner
    holder.append(pool)
    pool.demand = 1

    # The claim is made with no room (limit 0); the slot frees while it is answered, so
    # the pool looks again at once instead of waiting for a room change already seen.
    await asyncio.wait_for(pool._claim_once(), timeout=10)
    assert link.limits == [0]
    assert pool.free_slots() == 1




class WaitsForWork:
    """A work link whose claims find no work and wait for it until cancelled."""

    def __init__(self) -> None:
        self.limits: list[int] = []
        self.cancelled = 0

    async def claim(self, worker_id: str, endpoint_ids: list[str], limit: int,
                    wait: float, revision: int | None = None) -> ClaimReply:
        self.limits.append(limit)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


async def test_a_claim_with_no_room_is_dropped_when_a_slot_frees() -> None:
    # With every slot busy the pool's claim only waits to hear of new work. A slot freed
    # meanwhile must end that wait, so that the next claim (with room) is the one direct
    # runs are handed to.
    link = WaitsForWork()
    pool, runner = busy_pool(link)

    claiming = asyncio.ensure_future(pool._claim_once())
    while not link.limits:
        await asyncio.sleep(0)
    runner.in_flight.clear()
    pool.room_changed()
    await asyncio.wait_for(claiming, timeout=10)
    assert link.limits == [0] and link.cancelled == 1
