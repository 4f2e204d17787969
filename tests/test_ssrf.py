"""openfal refuses to fetch, for a caller, addresses the caller must not reach through it.

End-to-end cases use loopback targets only (this machine); the other ranges are checked
without any traffic, at the policy and resolver level.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from openfal.fetch import (
    FetchError,
    NetworkPolicy,
    check_public_url,
    pinned_request,
    resolve_permitted,
)

from conftest import APPS


class Target:
    """A loopback HTTP server that records every request it sees."""

    def __init__(self, host: str, redirect_to: str | None = None):
        self.hits: list[str] = []
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.hits.append(self.path)
                if redirect_to:
                    self.send_response(302)
                    self.send_header("location", redirect_to)
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("content-type", "text/plain")
                    self.end_headers()
                    self.wfile.write(b"secret")

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join()


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target("127.0.0.1")
    yield t
    t.close()


@pytest.fixture
def guarded(start_server) -> Iterator[httpx.Client]:
    """A server with no allowed private networks (the default)."""
    server = start_server("--app", f"{APPS}::Media")
    with server.client() as client:
        yield client


def refused(client: httpx.Client, field: str, url: str) -> dict:
    response = client.post("/openfal/media", json={field: url})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field]
    return detail


def test_loopback_targets_are_refused_and_see_nothing(guarded: httpx.Client,
                                                      target: Target) -> None:
    port = target.url.rsplit(":", 1)[1]
    for url in (f"{target.url}/a.png", f"http://localhost:{port}/b.png",
                f"http://[::1]:{port}/c.png", f"http://0x7f000001:{port}/d.png"):
        detail = refused(guarded, "image_url", url)
        assert "refused" in detail["msg"] or "cannot resolve" in detail["msg"]
    assert target.hits == []


def test_redirect_to_loopback_is_refused_at_the_hop(start_server, target: Target) -> None:
    try:
        redirector = Target("127.0.0.2", redirect_to=f"{target.url}/secret")
    except OSError:
        pytest.skip("127.0.0.2 is not available here")
    try:
        # Trust only the redirector's address: the hop to 127.0.0.1 must still be refused.
        server = start_server("--app", f"{APPS}::Media", "--allow-network", "127.0.0.2/32")
        with server.client() as client:
            detail = refused(client, "document", f"{redirector.url}/start")
        assert "127.0.0.1 is a loopback address" in detail["msg"]
        assert redirector.hits == ["/start"]
        assert target.hits == []
    finally:
        redirector.close()


def test_allowed_network_is_reachable(start_server, target: Target) -> None:
    server = start_server("--app", f"{APPS}::Media", "--allow-network", "127.0.0.1/32")
    with server.client() as client:
        response = client.post("/openfal/media", json={"document": f"{target.url}/ok"})
    assert response.status_code == 200, response.text
    assert target.hits == ["/ok"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://127.0.0.1:70/x",
                                 "ftp://example.com/a"])
def test_other_schemes_are_refused_at_submit(guarded: httpx.Client, url: str) -> None:
    for path in ("/openfal/media", "/queue/openfal/media"):
        response = guarded.post(path, json={"document": url})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "document"]


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"),
    ("172.16.0.9", "private"), ("192.168.1.1", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("fd00:ec2::254", "private"), ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::ffff:10.0.0.1", "private"), ("100.64.0.1", "public"),
])
def test_policy_refuses_non_public_ranges(address: str, kind: str) -> None:
    reason = NetworkPolicy().refusal(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


def test_policy_allows_public_and_allow_listed_addresses() -> None:
    assert NetworkPolicy().refusal(ipaddress.ip_address("93.184.216.34")) is None
    allowed = NetworkPolicy.allowing(["10.0.0.0/8"])
    assert allowed.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert allowed.refusal(ipaddress.ip_address("192.168.0.1")) is not None


def test_the_checked_address_is_the_one_connected_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # A name that resolves to a public address when checked and to loopback afterwards
    # (DNS rebinding) still gets a request pinned to the public address.
    answers = iter(["93.184.216.34", "127.0.0.1"])

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with httpx.Client() as client:
        request = pinned_request(client, "GET", "https://rebind.example/x", NetworkPolicy())
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "rebind.example"
    assert request.extensions["sni_hostname"] == "rebind.example"


def test_webhook_style_checks_refuse_private_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))])
    with pytest.raises(FetchError, match="private"):
        check_public_url("https://internal.example/hook")
    with pytest.raises(FetchError, match="private"):
        resolve_permitted("internal.example", 443, NetworkPolicy())
