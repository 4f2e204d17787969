"""The REST forms the model pages show, beside what the official clients send: by-id URLs
with the endpoint's sub-path, and endpoints whose own path ends in /stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openfal.testing import ServerProcess

from conftest import wait_for

APP = Path(__file__).parent / "apps" / "rest_forms.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--no-auth", "--no-builtin", "--app", f"{APP}::StreamOnly"]
    with ServerProcess(tmp_path_factory.mktemp("data"), args) as srv:
        yield srv


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines()
            if line.startswith("data: ")]


def test_by_id_urls_with_the_sub_path(server: ServerProcess) -> None:
    with server.client() as client:
        handle = client.post("/queue/openfal/krea/dev", json={"prompt": "a fox"}).json()
        assert handle["status_url"].endswith(f"/queue/openfal/krea/requests/"
                                             f"{handle['request_id']}/status")
        with_sub_path = f"/queue/openfal/krea/dev/requests/{handle['request_id']}"
        wait_for(lambda: client.get(with_sub_path + "/status").status_code == 200)
        assert client.get(with_sub_path + "/status").json()["status"] == "COMPLETED"
        assert client.get(with_sub_path).json() == {"prompt": "a fox"}
        assert client.put(with_sub_path + "/cancel").status_code == 400  # already completed
        with client.stream("GET", with_sub_path + "/status/stream") as stream:
            stream.read()
        assert events(stream)[-1]["status"] == "COMPLETED"
        assert client.get("/queue/openfal/krea/dev/requests/no-such-id/status"
                          ).status_code == 404


def test_an_endpoint_whose_path_ends_in_stream(server: ServerProcess) -> None:
    body = {"prompt": "a fox", "steps": 3}
    with server.client() as client:
        for path in ("/openfal/krea/stream", "/openfal/krea/stream/stream"):
            response = client.post(path, json=body)
            assert response.headers["content-type"].startswith("text/event-stream")
            assert events(response) == [{"step": 0}, {"step": 1}, {"step": 2},
                                        {"prompt": "a fox", "steps": 3}]
        handle = client.post("/queue/openfal/krea/stream", json=body).json()
        wait_for(lambda: client.get(handle["status_url"]).status_code == 200)
        assert client.get(handle["response_url"]).json() == {"prompt": "a fox", "steps": 3}
        assert client.post("/openfal/krea/stream", json={}).status_code == 422
