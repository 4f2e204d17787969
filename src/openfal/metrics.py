"""A server's metrics in the Prometheus text format (``GET /metrics``; docs/metrics.md).

Each server has a registry of its own, never prometheus_client's global one, so servers in
one process keep theirs apart. Counters and histograms count the outcomes this process
committed (its dispatcher calls ``request_finished``); the gauges are read at each scrape:
the queue and the webhook backlog from the store (right across gateways sharing it), the
runners from this process's worker, the stored bytes from the file store (a listing, kept
for ``STORED_BYTES_MAX_AGE`` seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openfal.store.base import Outcome, RequestRecord, Status
from openfal.worker.runners import RunnerState

if TYPE_CHECKING:
    from openfal.server import Platform

STORED_BYTES_MAX_AGE = 60.0
WEBHOOK_STATES = ("pending", "delivering")
# Seconds: from a few milliseconds (echo) to an hour (training runs).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
            1800, 3600)


@dataclass
class Snapshot:
    """What the gauges show, read at one scrape."""

    endpoint_ids: list[str]  # the served endpoints: shown at 0 when nothing of theirs waits
    unfinished: dict[tuple[str, Status], int]
    runners: Tally[str]  # by state
    webhooks: dict[str, int]  # by state
    stored_bytes: int


class _Gauges(Collector):
    """The gauges of the snapshot handed over last."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return
        endpoint_ids = sorted({*snapshot.endpoint_ids,
                               *(endpoint_id for endpoint_id, _ in snapshot.unfinished)})
        for name, status, text in (
                ("openfal_queue_depth", Status.IN_QUEUE, "Requests waiting for a runner."),
                ("openfal_requests_running", Status.IN_PROGRESS, "Requests running.")):
            family = GaugeMetricFamily(name, text, labels=["endpoint_id"])
            for endpoint_id in endpoint_ids:
                family.add_metric([endpoint_id],
                                  snapshot.unfinished.get((endpoint_id, status), 0))
            yield family
        runners = GaugeMetricFamily("openfal_runners", "This server's runners.",
                                    labels=["state"])
        for state in RunnerState:
            runners.add_metric([state.value], snapshot.runners[state.value])
        yield runners
        webhooks = GaugeMetricFamily("openfal_webhooks_backlog",
                                     "Webhooks not delivered yet.", labels=["state"])
        for state in WEBHOOK_STATES:
            webhooks.add_metric([state], snapshot.webhooks.get(state, 0))
        yield webhooks
        yield GaugeMetricFamily("openfal_stored_file_bytes", "Bytes in the file store.",
                                value=snapshot.stored_bytes)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.completed = Counter("openfal_requests_completed",
                                 "Requests this server finished with a status below 400.",
                                 ["endpoint_id"], registry=self.registry)
        self.failed = Counter("openfal_requests_failed",
                              "Requests this server finished with a status of 400 or more "
                              "(cancelled ones included).", ["endpoint_id"],
                              registry=self.registry)
        self.queue_seconds = Histogram("openfal_request_queue_seconds",
                                       "From submit to the first attempt's start.",
                                       ["endpoint_id"], buckets=_BUCKETS,
                                       registry=self.registry)
        self.run_seconds = Histogram("openfal_request_run_seconds",
                                     "From the first attempt's start to the outcome.",
                                     ["endpoint_id"], buckets=_BUCKETS, registry=self.registry)
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._stored_bytes: tuple[float, int] | None = None  # (when read, monotonic; bytes)

    def request_finished(self, record: RequestRecord, outcome: Outcome,
                         finished_at: float) -> None:
        """An outcome this process committed."""
        endpoint_id = record.endpoint_id
        (self.completed if outcome.status < 400 else self.failed).labels(endpoint_id).inc()
        if record.started_at is not None:  # it ran (else it was cancelled or timed out)
            self.queue_seconds.labels(endpoint_id).observe(
                max(0.0, record.started_at - record.created_at))
            self.run_seconds.labels(endpoint_id).observe(
                max(0.0, finished_at - record.started_at))

    async def scrape(self, platform: Platform) -> bytes:
        """Every metric, in the text format."""
        worker = platform.worker
        self._gauges.snapshot = Snapshot(
            endpoint_ids=[endpoint_id for app in platform.registry.apps.values()
                          for endpoint_id in app.endpoint_ids()],
            unfinished=await platform.store.unfinished_counts(),
            runners=Tally(runner["state"] for runner in
                          (worker.describe_runners() if worker is not None else [])),
            webhooks=await platform.store.webhook_backlog(),
            stored_bytes=await self._read_stored_bytes(platform))
        return generate_latest(self.registry)

    async def _read_stored_bytes(self, platform: Platform) -> int:
        now = time.monotonic()
        if self._stored_bytes is None or now - self._stored_bytes[0] > STORED_BYTES_MAX_AGE:
            self._stored_bytes = now, await asyncio.to_thread(platform.files.stored_bytes)
        return self._stored_bytes[1]
