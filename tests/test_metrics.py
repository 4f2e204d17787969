"""``GET /metrics`` against a real server: what it counts after a known load, and who may
read it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openfal.files.base import valid_id
from openfal.metrics import Metrics
from openfal.store.base import Mode, Outcome, RequestRecord, Status
from test_auth import auth
from test_media import data_uri

from conftest import APPS, ServerProcess, wait_for
from test_run_and_queue import submit, wait_done

APP_ARGS = ["--app", f"{APPS}::Work", "--app", f"{APPS}::Media", "--drain-seconds", "0"]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def stored_bytes(data_dir: Path) -> int:
    files = data_dir / "files"
    return sum(entry.stat().st_size for entry in os.scandir(files) if valid_id(entry.name))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", APP_ARGS) as started:
        yield started


def test_metrics_after_a_known_load(server: ServerProcess) -> None:
    admin = server.client(headers=auth(server.admin_key))
    created = admin.post("/api/keys", json={"name": "one at a time", "max_concurrency": 1})
    limited = server.client(headers=auth(created.json()["key"]))
    # n = 3 completed (direct runs), m = 2 failed (an app error, a request cancelled while
    # it waited), k = 2 waiting behind the limited key's running request.
    for i in range(3):
        assert admin.post("/openfal/echo", json={"prompt": f"{i}"}).status_code == 200
    wait_done(admin, submit(admin, "openfal/work", {"fail": "app"}))
    media = admin.post("/openfal/media", json={"document": data_uri(b"stored", "text/plain")})
    assert media.status_code == 200, media.text
    running = submit(limited, "openfal/work", {"seconds": 20, "steps": 40})
    wait_for(lambda: limited.get(running["status_url"]).json()["status"] == "IN_PROGRESS",
             what="the request to start")
    waiting = [submit(limited, "openfal/work", {}) for _ in range(3)]
    assert limited.put(waiting[0]["cancel_url"]).status_code == 202

    echo, work = {"endpoint_id": "openfal/echo"}, {"endpoint_id": "openfal/work"}

    def counted() -> Samples | None:
        # A direct caller is answered before the outcome is committed (and counted).
        samples = scrape(admin)
        done = value(samples, "openfal_requests_completed_total", **echo) == 3
        return samples if done else None

    samples = wait_for(counted, what="the direct runs counted")
    assert isinstance(samples, dict)
    # A counter has a series once it counted something.
    assert value(samples, "openfal_requests_failed_total", **echo) is None
    assert value(samples, "openfal_requests_completed_total", **work) is None
    assert value(samples, "openfal_requests_failed_total", **work) == 2
    assert value(samples, "openfal_queue_depth", **work) == 2
    assert value(samples, "openfal_requests_running", **work) == 1
    assert value(samples, "openfal_queue_depth", **echo) == 0
    assert value(samples, "openfal_requests_running", endpoint_id="openfal/work/edit") == 0
    # The histograms saw every request that ran: not the one cancelled while it waited.
    for histogram in ("openfal_request_queue_seconds", "openfal_request_run_seconds"):
        assert value(samples, f"{histogram}_count", **echo) == 3
        assert value(samples, f"{histogram}_count", **work) == 1
        assert value(samples, f"{histogram}_bucket", le="+Inf", **echo) == 3
    assert value(samples, "openfal_runners", state="running") == 1  # work's
    assert value(samples, "openfal_runners", state="idle") >= 2  # echo's and media's
    assert value(samples, "openfal_runners", state="draining") == 0
    assert value(samples, "openfal_webhooks_backlog", state="pending") == 0
    assert value(samples, "openfal_stored_file_bytes") == stored_bytes(server.data_dir) > 0
    for handle in (running, *waiting[1:]):
        limited.put(handle["cancel_url"])


def test_metrics_need_an_admin_key(server: ServerProcess) -> None:
    with server.client() as anonymous:
        response = anonymous.get("/metrics")
        assert response.status_code == 401
        assert response.json()["error_type"] == "unauthorized"
        created = anonymous.post("/api/keys", json={"name": "api"},
                                 headers=auth(server.admin_key))
        api = anonymous.get("/metrics", headers=auth(created.json()["key"]))
        assert api.status_code == 403
        assert anonymous.get("/metrics", headers=auth(server.admin_key)).status_code == 200


def test_public_metrics_need_no_key(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", ["--public-metrics"]) as public, \
            public.client() as anonymous:
        samples = scrape(anonymous)
    assert value(samples, "openfal_queue_depth", endpoint_id="openfal/echo") == 0
    assert value(samples, "openfal_runners", state="running") == 0


def test_servers_in_one_process_count_apart() -> None:
    record = RequestRecord(id="r", app_id="o/a", endpoint_id="o/a", path="/", mode=Mode.QUEUE,
                           status=Status.IN_PROGRESS, payload=b"{}", created_at=10.0,
                           started_at=12.0)
    first, second = Metrics(), Metrics()
    first.request_finished(record, Outcome(200, b"{}"), 15.0)
    first.request_finished(record, Outcome(500, b"{}"), 15.0)
    assert first.registry.get_sample_value("openfal_requests_completed_total",
                                           {"endpoint_id": "o/a"}) == 1
    assert first.registry.get_sample_value("openfal_requests_failed_total",
                                           {"endpoint_id": "o/a"}) == 1
    assert first.registry.get_sample_value("openfal_request_queue_seconds_sum",
                                           {"endpoint_id": "o/a"}) == 4.0
    assert first.registry.get_sample_value("openfal_request_run_seconds_sum",
                                           {"endpoint_id": "o/a"}) == 6.0
    assert second.registry.get_sample_value("openfal_requests_completed_total",
                                            {"endpoint_id": "o/a"}) is None
