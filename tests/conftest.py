"""A real openfal server per test (or per module), started as a separate process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from openfal.testing import ServerProcess

APPS = Path(__file__).parent / "apps" / "testapps.py"
ALL_TEST_APPS = [f"{APPS}::{name}" for name in (
    "Work", "Wait", "Scale", "Strict", "BrokenSetup", "Media", "RealtimeEcho")]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers for one test; all of them, and their runners, are stopped after it."""
    servers: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, port: int = 0,
              auth: bool = False) -> ServerProcess:
        """Tests of other features run without keys; auth tests pass ``auth=True``."""
        flags = [] if auth else ["--no-auth"]
        server = ServerProcess(data_dir or tmp_path / "data", [*args, *flags], port).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        server.reap_leftovers()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with every test app, shared by a module's tests."""
    # The tests' own HTTP servers run on loopback, which the fetcher refuses by default.
    args = [arg for ref in ALL_TEST_APPS for arg in ("--app", ref)]
    args += ["--allow-network", "127.0.0.0/8", "--no-auth"]
    with ServerProcess(tmp_path_factory.mktemp("data"), args) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def wait_for(predicate: Callable[[], object], timeout: float = 30.0,
             interval: float = 0.05, what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
