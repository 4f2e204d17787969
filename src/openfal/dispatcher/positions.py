"""Queue positions without counting rows: the waiting requests of each app, in the order
workers claim them, kept by the one process that owns an embedded store.

A position is a binary search, where counting the rows ahead in the database costs a scan
of the queue on every submit and poll. With a shared store, other gateways change the
queue too, so positions come from the store instead.
"""

from __future__ import annotations

import bisect

from openfal.store.base import RequestRecord

Key = tuple[int, float, str]  # priority, arrival, id: the order claims take


class QueuePositions:
    def __init__(self) -> None:
        self._queues: dict[str, list[Key]] = {}
        self._keys: dict[str, tuple[str, Key]] = {}  # request id -> (app id, key)

    def add(self, record: RequestRecord) -> None:
        if record.id in self._keys:
            return
        key = (record.priority, record.created_at, record.id)
        bisect.insort(self._queues.setdefault(record.app_id, []), key)
        self._keys[record.id] = (record.app_id, key)

    def remove(self, request_id: str) -> None:
        entry = self._keys.pop(request_id, None)
        if entry is None:
            return
        app_id, key = entry
        queue = self._queues[app_id]
        del queue[bisect.bisect_left(queue, key)]

    def position(self, request_id: str) -> int | None:
        entry = self._keys.get(request_id)
        if entry is None:
            return None
        app_id, key = entry
        return bisect.bisect_left(self._queues[app_id], key)
