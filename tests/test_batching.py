"""Dynamic batching: requests with equal keys share one call of a batched endpoint, and each
keeps its own id, result, logs, failure and cancel."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from pydantic import BaseModel

import openfal

from conftest import APPS, ServerProcess, wait_for
from test_run_and_queue import submit, wait_done

BATCHED = "openfal/batched"


class Item(BaseModel):
    value: str


def test_a_batch_larger_than_a_runner_takes_is_refused_when_the_app_is_defined() -> None:
    with pytest.raises(ValueError, match="max_multiplexing"):
        class TooBig(openfal.App):
            @openfal.endpoint("/", batch=openfal.Batch(max_size=8))
            def run(self, items: list[Item]) -> list[Item]:
                return items

    with pytest.raises(TypeError, match=r"list\[\.\.\.\]"):
        class NotAList(openfal.App, max_multiplexing=8):
            @openfal.endpoint("/", batch=openfal.Batch(max_size=8))
            def run(self, item: Item) -> Item:
                return item


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("batching"),
                       ["--no-auth", "--no-builtin", "--app", f"{APPS}::Batched"]) as started:
        yield started


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as opened:
        yield opened


def run_all(client: httpx.Client, *items: dict) -> list[dict]:
    """Submit every item at once; each request's status once done, with its result."""
    handles = [submit(client, BATCHED, item) for item in items]
    with ThreadPoolExecutor(len(handles)) as pool:
        statuses = list(pool.map(lambda h: wait_done(client, h, timeout=60), handles))
    for handle, status in zip(handles, statuses, strict=True):
        status["request_id"] = handle["request_id"]
        status["response"] = client.get(handle["response_url"])
    return statuses


def test_requests_with_one_key_share_a_call_and_keep_their_own_results(
        client: httpx.Client) -> None:
    values = [f"a{i}" for i in range(4)]
    statuses = run_all(client, *({"value": v, "group": "a"} for v in values))
    for value, status in zip(values, statuses, strict=True):
        result = status["response"].json()
        assert status["response"].status_code == 200
        assert result["value"] == value
        assert result["request_id"] == status["request_id"]
        assert sorted(result["batch"]) == values  # four requests, one call
        logs = [entry["message"] for entry in status["logs"]]
        assert any("in one call" in line and value in line for line in logs), logs


def test_requests_with_other_keys_do_not_share_a_call(client: httpx.Client) -> None:
    b0, b1, c0 = run_all(client, {"value": "b0", "group": "b"}, {"value": "b1", "group": "b"},
                         {"value": "c0", "group": "c"})
    assert sorted(b0["response"].json()["batch"]) == ["b0", "b1"]
    assert b1["response"].json()["batch"] == b0["response"].json()["batch"]
    assert c0["response"].json()["batch"] == ["c0"]


def test_an_output_that_is_an_error_fails_its_request_alone(client: httpx.Client) -> None:
    ok, refused = run_all(client, {"value": "d-ok", "group": "d"},
                          {"value": "d-bad", "group": "d", "fail": "item"})
    assert sorted(ok["response"].json()["batch"]) == ["d-bad", "d-ok"]
    assert refused["response"].status_code == 400
    assert refused["response"].json()["detail"] == "d-bad is refused"


def test_a_call_that_raises_is_run_again_request_by_request(client: httpx.Client) -> None:
    ok, broken = run_all(client, {"value": "e-ok", "group": "e"},
                         {"value": "e-boom", "group": "e", "fail": "call"})
    assert ok["response"].status_code == 200
    assert ok["response"].json()["batch"] == ["e-ok"]  # its second call, alone
    assert broken["response"].status_code == 500
    assert any("breaks the whole call" in entry["message"] for entry in broken["logs"])


def test_a_request_cancelled_while_it_waits_leaves_its_batch(client: httpx.Client) -> None:
    # Three of at most four: the call starts when the 3 s window has passed.
    handles = [submit(client, BATCHED, {"value": f"f{i}", "group": "f"}) for i in range(3)]
    for handle in handles:
        wait_for(lambda h=handle: client.get(h["status_url"]).json()["status"] == "IN_PROGRESS",
                 what="the request to reach the runner")
    assert client.put(handles[1]["cancel_url"]).status_code == 202
    cancelled = client.get(wait_done(client, handles[1])["response_url"])
    assert cancelled.status_code == 499
    for handle in (handles[0], handles[2]):
        wait_done(client, handle)
        assert sorted(client.get(handle["response_url"]).json()["batch"]) == ["f0", "f2"]
