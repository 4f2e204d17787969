"""SQL both stores share for the request history and the metrics: the same statements in
SQLite and PostgreSQL, only their placeholders differ (``?`` and ``$n``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from openfal.store.base import HistoryQuery, HistoryStatus, Status

_STATUS = {
    HistoryStatus.IN_QUEUE: "status = 'IN_QUEUE'",
    HistoryStatus.IN_PROGRESS: "status = 'IN_PROGRESS'",
    HistoryStatus.COMPLETED: "status = 'COMPLETED' AND result_status < 400",
    HistoryStatus.FAILED: "status = 'COMPLETED' AND result_status >= 400",
}

# Waiting requests counted through their queue index, running ones (few: as many as there
# are runner slots) listed through their lease index, one row each (grouped, SQLite would
# walk every request in endpoint order instead): a scrape reads no finished request.
UNFINISHED = """SELECT endpoint_id, 'IN_QUEUE', count(*) FROM requests
        WHERE status = 'IN_QUEUE' GROUP BY endpoint_id
    UNION ALL
    SELECT endpoint_id, 'IN_PROGRESS', 1 FROM requests WHERE status = 'IN_PROGRESS'"""

# Each state through its own partial index.
WEBHOOK_BACKLOG = """SELECT 'pending', count(*) FROM webhooks WHERE state = 'pending'
    UNION ALL
    SELECT 'delivering', count(*) FROM webhooks WHERE state = 'delivering'"""


def unfinished_counts(rows: Iterable[Sequence[Any]]) -> dict[tuple[str, Status], int]:
    """The rows of ``UNFINISHED`` summed by endpoint id and status."""
    counts: Counter[tuple[str, Status]] = Counter()
    for endpoint_id, status, count in rows:
        counts[endpoint_id, Status(status)] += count
    return dict(counts)


class _Parameters:
    """Values bound to a statement, each named by the store's placeholder for its place."""

    def __init__(self, placeholder: Callable[[int], str]) -> None:
        self.values: list[Any] = []
        self._placeholder = placeholder

    def add(self, value: Any) -> str:
        self.values.append(value)
        return self._placeholder(len(self.values))


def history_statement(query: HistoryQuery,
                      placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """The SELECT of one history page and its values. The page continues after ``before``
    as ``(created_at, id) < before``, spelt so that an index on ``(created_at, id)`` (or
    after ``endpoint_id`` or ``key_id``) serves it in any database."""
    params = _Parameters(placeholder)
    where = [f"created_at >= {params.add(query.start)}"]
    if query.end is not None:
        where.append(f"created_at < {params.add(query.end)}")
    if query.endpoint_id is not None:
        where.append(f"endpoint_id = {params.add(query.endpoint_id)}")
    if query.key_id is not None:
        where.append(f"key_id = {params.add(query.key_id)}")
    if query.status is not None:
        where.append(_STATUS[query.status])
    if query.before is not None:
        created_at, request_id = query.before
        at = params.add(created_at)
        where.append(f"created_at <= {at} AND (created_at < {at}"
                     f" OR id < {params.add(request_id)})")
    limit = params.add(query.limit)
    sql = (f"SELECT * FROM requests WHERE {' AND '.join(where)}"
           f" ORDER BY created_at DESC, id DESC LIMIT {limit}")
    return sql, params.values
