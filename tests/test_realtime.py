"""Realtime websockets: msgpack frames, partials, errors, idle timeout and tokens."""

from __future__ import annotations

import json

import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from conftest import ServerProcess


def ws_url(server: ServerProcess, path: str, token: str | None = None) -> str:
    url = server.url.replace("http://", "ws://") + path
    return url + (f"?fal_jwt_token={token}" if token else "")


def send(ws: ClientConnection, message: dict) -> None:
    ws.send(msgpack.packb(message, use_bin_type=True))


def receive(ws: ClientConnection) -> dict:
    frame = ws.recv(timeout=30)
    if isinstance(frame, bytes):
        return msgpack.unpackb(frame, raw=False)
    return json.loads(frame)


def test_each_message_gets_its_answer_with_bytes_intact(server: ServerProcess) -> None:
    with connect(ws_url(server, "/openfal/realtime-echo/realtime")) as ws:
        for n in range(5):
            send(ws, {"n": n, "image": bytes([n, 1, 2])})
            assert receive(ws) == {"n": n, "size": 3, "image": bytes([2, 1, n])}


def test_partials_arrive_before_the_answer(server: ServerProcess) -> None:
    with connect(ws_url(server, "/openfal/realtime-echo/steps")) as ws:
        send(ws, {"n": 3})
        assert [receive(ws) for _ in range(4)] == [
            {"partial": 0}, {"partial": 1}, {"partial": 2}, {"final": 3}]


def test_invalid_message_is_an_error_frame_and_the_session_goes_on(
        server: ServerProcess) -> None:
    with connect(ws_url(server, "/openfal/realtime-echo/realtime")) as ws:
        send(ws, {"n": -1})
        error = receive(ws)
        assert error["type"] == "x-fal-error"
        assert error["error"] == "VALIDATION_ERROR"
        assert json.loads(error["reason"])[0]["loc"] == ["body", "n"]
        ws.send(b"\xc1 not msgpack")
        assert receive(ws)["error"] == "INVALID_MESSAGE"
        send(ws, {"n": 7})
        assert receive(ws)["n"] == 7


def test_idle_session_is_closed_cleanly(server: ServerProcess) -> None:
    with connect(ws_url(server, "/openfal/realtime-echo/realtime")) as ws:
        timeout = receive(ws)
        assert (timeout["type"], timeout["error"]) == ("x-fal-error", "TIMEOUT")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_tokens_gate_sessions(server: ServerProcess, client: httpx.Client) -> None:
    minted = client.post("/tokens/", json={"allowed_apps": ["realtime-echo"],
                                           "token_expiration": 120})
    assert minted.status_code == 201
    token = minted.json()
    assert isinstance(token, str)
    with connect(ws_url(server, "/openfal/realtime-echo/realtime", token)) as ws:
        send(ws, {"n": 1})
        assert receive(ws)["n"] == 1

    other = client.post("/tokens/", json={"allowed_apps": ["flux"]}).json()
    for bad in (other, "not-a-token", token[:-4] + "AAAA"):
        with connect(ws_url(server, "/openfal/realtime-echo/realtime", bad)) as ws:
            frame = receive(ws)
            assert (frame["status"], frame["error"]) == ("error", "Unauthorized")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_token_requests_are_validated(client: httpx.Client) -> None:
    assert client.post("/tokens/", json={}).status_code == 422
    response = client.post("/tokens/", json={"allowed_apps": ["x"], "token_expiration": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "token_expiration"]


def test_websocket_on_a_plain_endpoint_is_refused(server: ServerProcess) -> None:
    with (pytest.raises((InvalidStatus, ConnectionClosed)),
          connect(ws_url(server, "/openfal/echo")) as ws):
        ws.recv(timeout=10)


def test_a_bad_lifecycle_header_ends_the_session(server: ServerProcess) -> None:
    with connect(ws_url(server, "/openfal/realtime-echo/realtime"),
                 additional_headers={"x-fal-object-lifecycle-preference": '"soon"'}) as ws:
        frame = receive(ws)
        assert (frame["type"], frame["error"]) == ("x-fal-error", "VALIDATION_ERROR")
        assert "x-fal-object-lifecycle-preference" in frame["reason"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
