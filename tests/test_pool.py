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

    def __init__(self, pool_holder: list[AppPool], runner: RunnerHandle):
        self.pool_holder = pool_holder
        self.runner = runner
        self.limits: list[int] = []

    async def claim(self, worker_id: str, endpoint_ids: list[str], limit: int,
                    wait: float) -> ClaimReply:
        self.limits.append(limit)
        self.runner.in_flight.clear()
        self.pool_holder[0].room_changed()
        return ClaimReply([], waiting=1)


async def test_a_slot_freed_during_a_claim_is_used_at_once(monkeypatch) -> None:
    monkeypatch.setattr(pool_module, "ROOM_POLL_SECONDS", 60.0)
    app = SimpleNamespace(
        cls=SimpleNamespace(max_multiplexing=1, min_concurrency=0, max_concurrency=1,
                            keep_alive=10.0),
        app_id="openfal/slow", ref="unused", endpoint_ids=lambda: ["openfal/slow"])
    runner = RunnerHandle("openfal/slow", "unused", max_multiplexing=1)
    runner.ready = True
    runner.in_flight["busy"] = object()  # type: ignore[assignment]
    holder: list[AppPool] = []
    link = SlotFreedDuringClaim(holder, runner)
    pool = AppPool(app, SimpleNamespace(link=link, id="worker-1"))  # type: ignore[arg-type]
    holder.append(pool)
    pool.runners[runner.id] = runner
    pool.demand = 1

    # The claim is made with no room (limit 0); the slot frees while it is answered, so
    # the pool looks again at once instead of waiting for a room change already seen.
    await asyncio.wait_for(pool._claim_once(), timeout=10)
    assert link.limits == [0]
    assert pool.free_slots() == 1


