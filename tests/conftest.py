"""A real openfal server per test (or per module), started as a separate process."""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from openfal.testing import ServerProcess, worker_process
from services import S3Service, start_seaweedfs

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


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``openfal worker`` processes for one test: ``start(gateway, name, app)``, each
    with a data dir of its own; all are stopped after it (resumed first if a test froze one:
    a stopped worker cannot drain)."""
    workers: list[ServerProcess] = []

    def start(gateway: ServerProcess, name: str, app: str) -> ServerProcess:
        worker = worker_process(tmp_path / name, gateway.url, "unused", [app]).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            os.killpg(worker.pid, signal.SIGCONT)
        worker.stop()
        worker.reap_leftovers()


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


# In CI (CI set, as CI services do), a skipped test fails the run unless it is marked
# @pytest.mark.never_in_ci(reason): what a test needs is installed there (README install,
# scripts/test), so a skip means something went missing. Only what can never be there (a GPU)
# may skip. A module that skips as a whole (pytest.importorskip at module level) cannot carry
# the mark: in CI it is a collection error.

def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _never_in_ci(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("never_in_ci")
    if marker is None:
        return False
    reason = marker.kwargs.get("reason", marker.args[0] if marker.args else "")
    return bool(str(reason).strip())


def _skipped_in_ci(report: pytest.TestReport | pytest.CollectReport) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    return (f"skipped in CI ({reason}): CI must run every test; install what it needs "
            "(scripts/test), or mark it @pytest.mark.never_in_ci(reason=...) if it can never "
            "run there")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if (report.skipped and not hasattr(report, "wasxfail") and _ci()
            and not _never_in_ci(item)):
        report.longrepr = _skipped_in_ci(report)
        report.outcome = "failed"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.skipped and _ci():
        report.longrepr = _skipped_in_ci(report)
        report.outcome = "failed"
    return report


# S3: one real server (SeaweedFS, tests/services.py) for the whole session; a bucket per test.
@pytest.fixture(scope="session")
def s3_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    service = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield service
    service.stop()


@pytest.fixture
def s3_env(s3_service: S3Service, monkeypatch: pytest.MonkeyPatch) -> S3Service:
    """The server, with the standard AWS variables pointing at it for this test."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_service.environment().items():
        monkeypatch.setenv(name, value)
    return s3_service


@pytest.fixture
def s3_bucket(s3_env: S3Service) -> str:
    """A new, empty bucket on the server (with the AWS variables set)."""
    return s3_env.bucket(f"test-{uuid.uuid4().hex[:16]}")


# PostgreSQL: one real server (tests/services_pg.py) for the whole session; a database per test.
import services_pg  # noqa: E402  (imported here, beside its fixtures)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[services_pg.PostgresServer]:
    try:
        server = services_pg.PostgresServer.start()
    except services_pg.PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: services_pg.PostgresServer) -> str:
    """The URL of a new, empty database on the server."""
    return postgres_server.create_database()


def tarred(files: dict[str, bytes]) -> bytes:
    """A gzipped tar of ``files`` (name -> content), names as given (``..`` too)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
