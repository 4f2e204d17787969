"""A real openfal server per test (or per module), started as a separate process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

APPS = Path(__file__).parent / "apps" / "testapps.py"
ALL_TEST_APPS = [f"{APPS}::{name}" for name in (
    "Work", "Wait", "Scale", "Strict", "BrokenSetup", "Media", "RealtimeEcho")]
START_TIMEOUT = 60.0


class ServerProcess:
    """``openfal serve`` in its own process group, on a free port, with its own data dir."""

    def __init__(self, data_dir: Path, args: list[str], port: int = 0):
        self.data_dir = data_dir
        self.args = args
        self.port = port
        self.tag = uuid.uuid4().hex
        self.url = ""
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ServerProcess:
        env = {**os.environ, "OPENFAL_TEST_TAG": self.tag}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openfal", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)
        ready = threading.Event()
        threading.Thread(target=self._collect, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT) or not self.url:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output))
        return self

    def _collect(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            if line.startswith("openfal listening on "):
                self.url = line.split()[-1]
                self.port = int(self.url.rsplit(":", 1)[1])
                ready.set()
        ready.set()

    @property
    def admin_key(self) -> str:
        """The ADMIN key a server with auth made on first start."""
        return (self.data_dir / "admin.key").read_text().strip()

    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """``kill -9`` the server process (its runners notice and exit)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def leftover_pids(self) -> list[int]:
        """Processes that still carry this server's tag (runners included)."""
        pids = []
        marker = f"OPENFAL_TEST_TAG={self.tag}".encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "environ").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def reap_leftovers(self) -> None:
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


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
    srv = ServerProcess(tmp_path_factory.mktemp("data"), args).start()
    yield srv
    srv.stop()
    srv.reap_leftovers()


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
