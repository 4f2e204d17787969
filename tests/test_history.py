"""The request history API against a real server: listing, paging, filters, who sees what,
deleting payloads and output files, and ``X-Fal-Store-IO: 0``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from test_auth import auth
from test_media import upload
from test_webhooks import Receiver

from conftest import APPS, ServerProcess, wait_for
from test_run_and_queue import submit, wait_done

APP_ARGS = ["--app", f"{APPS}::Work", "--app", f"{APPS}::Media",
            "--allow-network", "127.0.0.0/8", "--drain-seconds", "0"]
ITEM_FIELDS = {"request_id", "endpoint_id", "sent_at", "started_at", "ended_at", "status_code",
               "duration", "json_input", "json_output", "status", "error"}
BY_ENDPOINT = "/v1/models/requests/by-endpoint"
REQUESTS = "/v1/models/requests"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("history"), APP_ARGS) as started:
        yield started


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[dict[str, httpx.Client]]:
    """An admin and three API keys: alice, bob, and carol who runs one request at a time."""
    made = {"admin": server.client(headers=auth(server.admin_key))}
    for name, limit in (("alice", None), ("bob", None), ("carol", 1)):
        response = made["admin"].post("/api/keys", json={"name": name,
                                                         "max_concurrency": limit})
        assert response.status_code == 201, response.text
        made[name] = server.client(headers=auth(response.json()["key"]))
    yield made
    for client in made.values():
        client.close()


def listed(client: httpx.Client, path: str = REQUESTS, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def listed_ids(client: httpx.Client, path: str = REQUESTS, **params: Any) -> list[str]:
    return [item["request_id"] for item in listed(client, path, **params)["items"]]


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def echo(client: httpx.Client, prompt: str, **kwargs: Any) -> str:
    handle = submit(client, "openfal/echo", {"prompt": prompt}, **kwargs)
    wait_done(client, handle)
    return handle["request_id"]


def test_by_endpoint_lists_the_callers_requests_newest_first(
        clients: dict[str, httpx.Client]) -> None:
    alice = clients["alice"]
    since = iso(time.time())
    queued = [echo(alice, f"hello {i}") for i in range(2)]
    direct = alice.post("/openfal/echo", json={"prompt": "direct"})
    assert direct.status_code == 200, direct.text
    wait_for(lambda: listed_ids(alice, BY_ENDPOINT, endpoint_id="openfal/echo", start=since)
             [:1] == [direct.headers["x-fal-request-id"]], what="the direct run's outcome")
    page = listed(alice, BY_ENDPOINT, endpoint_id="openfal/echo", start=since)
    assert (page["has_more"], page["next_cursor"]) == (False, None)
    items = page["items"]
    assert [item["request_id"] for item in items] == [
        direct.headers["x-fal-request-id"], *reversed(queued)]
    newest = items[1]
    assert set(newest) == ITEM_FIELDS
    assert (newest["endpoint_id"], newest["status_code"], newest["status"], newest["error"]) == (
        "openfal/echo", 200, "COMPLETED", None)
    assert (newest["json_input"], newest["json_output"]) == ({"prompt": "hello 1"},
                                                             {"text": "hello 1"})
    sent, started, ended = (datetime.fromisoformat(newest[name])
                            for name in ("sent_at", "started_at", "ended_at"))
    assert sent.utcoffset() is not None and sent.utcoffset().total_seconds() == 0
    assert sent <= started <= ended
    assert newest["duration"] == pytest.approx((ended - started).total_seconds(), abs=1e-5)
    # Another key sees none of them; an ADMIN key sees them all.
    assert listed_ids(clients["bob"], BY_ENDPOINT, endpoint_id="openfal/echo",
                      start=since) == []
    assert set(listed_ids(clients["admin"], BY_ENDPOINT, endpoint_id="openfal/echo",
                          start=since)) >= {item["request_id"] for item in items}


def test_pages_follow_the_cursor_without_gaps_or_repeats(
        clients: dict[str, httpx.Client]) -> None:
    bob = clients["bob"]
    since = iso(time.time())
    made = [echo(bob, f"page {i}") for i in range(7)]
    seen: list[str] = []
    sizes = []
    params: dict[str, Any] = {"endpoint_id": "openfal/echo", "start": since, "limit": 3}
    while True:
        page = listed(bob, BY_ENDPOINT, **params)
        seen += [item["request_id"] for item in page["items"]]
        sizes.append(len(page["items"]))
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        echo(bob, "newer than the first page")  # arrives between pages: on no later page
        params["cursor"] = page["next_cursor"]
    assert sizes == [3, 3, 1]
    assert seen == list(reversed(made))


def test_time_range_start_and_end(clients: dict[str, httpx.Client]) -> None:
    alice = clients["alice"]
    before = time.time()
    first = echo(alice, "first")
    between = time.time()
    second = echo(alice, "second")
    assert listed_ids(alice, start=iso(before), end=iso(between)) == [first]
    assert listed_ids(alice, start=iso(between)) == [second]
    assert listed_ids(alice, start=iso(before)) == [second, first]
    assert listed_ids(alice, start=iso(before), end=iso(before)) == []
    # Without an offset a time is UTC; without start, the last 24 hours.
    naive = datetime.fromtimestamp(between, UTC).replace(tzinfo=None).isoformat()
    assert listed_ids(alice, start=naive) == [second]
    assert {first, second} <= set(listed_ids(alice, limit=100))


def test_state_filter_and_errors(clients: dict[str, httpx.Client]) -> None:
    carol = clients["carol"]
    since = iso(time.time())
    done = echo(carol, "done")
    failed = submit(carol, "openfal/work", {"fail": "app"})
    wait_done(carol, failed)
    running = submit(carol, "openfal/work", {"seconds": 20, "steps": 40})
    wait_for(lambda: carol.get(running["status_url"]).json()["status"] == "IN_PROGRESS",
             what="the request to start")
    waiting = submit(carol, "openfal/work", {})  # carol's one slot is taken
    cancelled = submit(carol, "openfal/work", {})
    assert carol.put(cancelled["cancel_url"]).status_code == 202

    def states(status: str) -> list[str]:
        return listed_ids(carol, start=since, status=status)

    assert states("COMPLETED") == [done]
    assert states("FAILED") == [cancelled["request_id"], failed["request_id"]]
    assert states("IN_PROGRESS") == [running["request_id"]]
    assert states("IN_QUEUE") == [waiting["request_id"]]
    items = {item["request_id"]: item for item in listed(carol, start=since)["items"]}
    assert items[failed["request_id"]]["error"] == "bad message"
    assert items[failed["request_id"]]["status_code"] == 400
    assert (items[cancelled["request_id"]]["status_code"],
            items[cancelled["request_id"]]["error"]) == (499, "Request cancelled")
    queued = items[waiting["request_id"]]
    assert (queued["status"], queued["started_at"], queued["ended_at"], queued["status_code"],
            queued["duration"], queued["json_output"]) == ("IN_QUEUE", None, None, None, None,
                                                           None)
    assert queued["json_input"] == {}
    # A request that has not finished keeps its input: its payloads cannot be deleted yet.
    deleting = carol.delete(f"{REQUESTS}/{waiting['request_id']}/payloads")
    assert deleting.status_code == 409, deleting.text
    for handle in (running, waiting):
        carol.put(handle["cancel_url"])


@pytest.mark.parametrize(("path", "params", "field"), [
    (BY_ENDPOINT, {}, "endpoint_id"),
    (BY_ENDPOINT, {"endpoint_id": ""}, "endpoint_id"),
    (REQUESTS, {"limit": "0"}, "limit"),
    (REQUESTS, {"limit": "101"}, "limit"),
    (REQUESTS, {"limit": "ten"}, "limit"),
    (REQUESTS, {"cursor": "not-a-cursor"}, "cursor"),
    (REQUESTS, {"cursor": "WzEsMiwzXQ"}, "cursor"),  # [1,2,3]
    (REQUESTS, {"start": "yesterday"}, "start"),
    (REQUESTS, {"end": "2024-13-40T00:00:00Z"}, "end"),
    (REQUESTS, {"status": "DONE"}, "status"),
])
def test_bad_parameters_are_422_naming_them(clients: dict[str, httpx.Client], path: str,
                                            params: dict[str, str], field: str) -> None:
    response = clients["alice"].get(path, params=params)
    assert response.status_code == 422, response.text
    assert [error["loc"][:2] for error in response.json()["detail"]] == [["query", field]]


def test_the_history_needs_a_key(server: ServerProcess) -> None:
    with server.client() as anonymous:
        for response in (anonymous.get(REQUESTS),
                         anonymous.get(BY_ENDPOINT, params={"endpoint_id": "openfal/echo"}),
                         anonymous.delete(f"{REQUESTS}/x/payloads")):
            assert response.status_code == 401


def test_deleting_payloads_removes_outputs_and_keeps_inputs(
        clients: dict[str, httpx.Client]) -> None:
    alice, bob, admin = clients["alice"], clients["bob"], clients["admin"]
    document = upload(alice, b"an input document\n", "text/plain", "in.txt")
    handle = submit(alice, "openfal/media", {"document": document})
    wait_done(alice, handle)
    output = alice.get(handle["response_url"]).json()["echo"]["url"]
    assert alice.get(output).status_code == 200
    request_id = handle["request_id"]
    payloads = f"{REQUESTS}/{request_id}/payloads"
    assert bob.delete(payloads).status_code == 404  # another key's request
    assert alice.delete(f"{REQUESTS}/unknown/payloads").status_code == 404
    response = alice.delete(payloads)
    assert response.status_code == 200, response.text
    assert response.json() == {"request_id": request_id, "deleted_files": 1}
    assert alice.get(output).status_code == 404
    assert alice.get(document).content == b"an input document\n"
    [item] = [item for item in listed(alice, BY_ENDPOINT, endpoint_id="openfal/media")["items"]
              if item["request_id"] == request_id]
    assert (item["json_input"], item["json_output"]) == (None, None)
    assert (item["status"], item["status_code"]) == ("COMPLETED", 200)
    assert alice.get(handle["response_url"]).status_code == 410
    # Again: nothing left to delete. An ADMIN key may delete any request's.
    assert alice.delete(payloads).json()["deleted_files"] == 0
    other = echo(bob, "bob's")
    assert admin.delete(f"{REQUESTS}/{other}/payloads").status_code == 200
    [bobs] = [item for item in listed(bob, start=iso(time.time() - 60))["items"]
              if item["request_id"] == other]
    assert bobs["json_input"] is None


def history_item(client: httpx.Client, request_id: str) -> dict[str, Any]:
    [item] = [item for item in listed(client, start=iso(time.time() - 300), limit=100)["items"]
              if item["request_id"] == request_id]
    return item


def test_store_io_0_delivers_the_result_once_then_keeps_no_payloads(
        clients: dict[str, httpx.Client]) -> None:
    alice = clients["alice"]
    handle = submit(alice, "openfal/echo", {"prompt": "secret"},
                    headers={"x-fal-store-io": "0"})
    wait_done(alice, handle)
    # Kept until the result is delivered...
    assert history_item(alice, handle["request_id"])["json_input"] == {"prompt": "secret"}
    first = alice.get(handle["response_url"])
    assert (first.status_code, first.json()) == (200, {"text": "secret"})
    # ...then gone, from the history and from the result URL.
    again = alice.get(handle["response_url"])
    assert again.status_code == 410, again.text
    item = history_item(alice, handle["request_id"])
    assert (item["json_input"], item["json_output"], item["status_code"]) == (None, None, 200)
    # A direct run's (and a stream's) are dropped as soon as it ends.
    for path in ("/openfal/echo", "/openfal/echo/stream"):
        direct = alice.post(path, json={"prompt": "secret"}, headers={"x-fal-store-io": "0"})
        assert direct.status_code == 200 and "secret" in direct.text
        request_id = direct.headers["x-fal-request-id"]
        wait_for(lambda rid=request_id: history_item(alice, rid)["status"] == "COMPLETED",
                 what="the outcome")
        item = history_item(alice, request_id)
        assert (item["json_input"], item["json_output"]) == (None, None)
    refused = alice.post("/queue/openfal/echo", json={"prompt": "x"},
                         headers={"x-fal-store-io": "no"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["header", "x-fal-store-io"]


def test_store_io_0_with_a_webhook_drops_payloads_once_it_is_acknowledged(
        clients: dict[str, httpx.Client]) -> None:
    alice = clients["alice"]
    receiver = Receiver().start()
    try:
        handle = submit(alice, f"openfal/echo?fal_webhook={receiver.url}", {"prompt": "hook"},
                        headers={"x-fal-store-io": "0"})
        request_id = handle["request_id"]
        wait_for(lambda: receiver.for_request(request_id), what="the webhook")
        assert receiver.for_request(request_id)[0].json["payload"] == {"text": "hook"}
        wait_for(lambda: history_item(alice, request_id)["json_output"] is None,
                 what="the payloads dropped")
        assert history_item(alice, request_id)["json_input"] is None
        assert alice.get(handle["response_url"]).status_code == 410
    finally:
        receiver.stop()
