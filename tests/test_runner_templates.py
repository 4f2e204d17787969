"""Runner templates: after the first runner of an environment, runners are forked from a
process that has imported what they need, each with its own environment and session."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from openfal.testing import ServerProcess

from conftest import wait_for

APP = '''
import importlib
import os
import sys
import time

import openfal
from pydantic import BaseModel

# Imported by setup(): a module of the standard library, and one of the app's own beside it.
ALREADY_IMPORTED = {name: name in sys.modules for name in ("colorsys", "probe_helper")}


class Where(BaseModel):
    pid: int
    parent_pid: int
    parent: str
    session_leader: bool
    runner_id: str
    secret: str | None
    torch_threads: int | None
    blas_threads: int | None
    set_up_at: float  # seconds since boot, as /proc counts a process's start
    already_imported: dict[str, bool]  # before this module was
    nice: int


def blas_threads() -> int:
    import numpy  # noqa: F401  (torch imports it: its BLAS is loaded)
    from threadpoolctl import threadpool_info

    return max(pool["num_threads"] for pool in threadpool_info()
               if pool["user_api"] == "blas")


class Probe(openfal.App, app_name="probe", keep_alive=0.2):
    runtime_modules = RUNTIME_MODULES

    def setup(self) -> None:
        import colorsys  # noqa: F401
        import probe_helper  # noqa: F401

        self.set_up_at = time.clock_gettime(time.CLOCK_BOOTTIME)

    @openfal.endpoint("/")
    def where(self) -> Where:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as cmdline:
            parent = cmdline.read().replace(b"\\0", b" ").decode()
        return Where(pid=os.getpid(), parent_pid=os.getppid(), parent=parent,
                     session_leader=os.getsid(0) == os.getpid(),
                     runner_id=os.environ["OPENFAL_RUNNER_ID"],
                     secret=os.environ.get("PROBE_SECRET"),
                     torch_threads=importlib.import_module("torch").get_num_threads()
                     if "torch" in self.runtime_modules else None,
                     blas_threads=blas_threads() if "torch" in self.runtime_modules else None,
                     set_up_at=self.set_up_at, already_imported=ALREADY_IMPORTED,
                     nice=os.getpriority(os.PRIO_PROCESS, 0))
'''


def write_probe(folder: Path, runtime_modules: tuple[str, ...]) -> str:
    path = folder / "probe.py"
    path.write_text(APP.replace("RUNTIME_MODULES", repr(runtime_modules)))
    (folder / "probe_helper.py").write_text("")
    return f"{path}::Probe"


@pytest.fixture
def probe_app(tmp_path: Path) -> str:
    return write_probe(tmp_path, ("json",))


def where(client: httpx.Client) -> dict:
    response = client.post("/openfal/probe", json={})
    assert response.status_code == 200, response.text
    return response.json()


def next_runner(client: httpx.Client, server: ServerProcess, previous: dict) -> dict:
    """A request served by a new runner (the previous one stops when idle: keep_alive),
    once the template is no longer starting."""
    def settled() -> bool:
        listing = client.get("/api/runners").json()
        return (not any(r["pid"] == previous["pid"] for r in listing["runners"])
                and all(t["state"] != "starting" for t in listing["templates"]))

    wait_for(settled)
    return where(client)


def spawned_and_forked(server: ServerProcess) -> tuple[dict, dict, list[dict]]:
    """What the first runner of ``server``'s probe app says, what the next one (forked from
    the template) says, and the templates listed then."""
    with server.client() as client:
        spawned = where(client)
        forked = next_runner(client, server, spawned)
        templates = client.get("/api/runners").json()["templates"]
    assert "openfal.runner.template" in forked["parent"], templates
    return spawned, forked, templates


def started_at(pid: int) -> float:
    """When process ``pid`` started, in seconds since boot."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def test_runners_after_the_first_are_forked_from_the_template(
        start_server: Callable[..., ServerProcess], probe_app: str) -> None:
    server = start_server("--no-builtin", "--app", probe_app)
    with server.client() as client:
        client.put("/api/secrets/PROBE_SECRET", json={"value": "s3cret"}).raise_for_status()
        first = where(client)
        assert "openfal.runner.template" not in first["parent"]  # spawned: none was ready
        later = [first]
        for _ in range(2):
            later.append(next_runner(client, server, later[-1]))
        template_started_at = started_at(later[1]["parent_pid"])
    for runner in later[1:]:
        assert "openfal.runner.template" in runner["parent"], runner
    # The template started once the first runner was set up: its imports would otherwise
    # have competed with that runner's for the CPU.
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc's resolution
    assert template_started_at >= first["set_up_at"] - tick
    assert all(runner["session_leader"] for runner in later)
    assert len({runner["runner_id"] for runner in later}) == 3
    assert {runner["secret"] for runner in later} == {"s3cret"}  # read as each one started


def test_forked_runners_start_with_the_library_modules_the_first_runner_imported(
        start_server: Callable[..., ServerProcess], probe_app: str) -> None:
    # What the first runner had imported by the end of setup() comes with the fork (a
    # pipeline's modules: most of a forked runner's cold start otherwise); the app's own
    # code does not: importing it in the template could do anything.
    spawned, forked, [template] = spawned_and_forked(
        start_server("--no-builtin", "--app", probe_app))
    assert spawned["already_imported"] == {"colorsys": False, "probe_helper": False}
    assert forked["already_imported"] == {"colorsys": True, "probe_helper": False}
    assert template["first_runner_modules"] > 0
    # The template imports at the lowest CPU priority, in a thread: not what it forks.
    assert forked["nice"] == spawned["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_a_template_that_imports_torch_forks_runners_with_torchs_usual_threads(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """torch starts OpenMP's and numpy's BLAS threads when imported, which would make forking
    unsafe: the template imports it single-threaded and each runner gets the threads a
    spawned one has."""
    pytest.importorskip("torch")
    spawned, forked, _ = spawned_and_forked(
        start_server("--no-builtin", "--app", write_probe(tmp_path, ("torch",))))
    cores = len(os.sched_getaffinity(0))
    assert forked["torch_threads"] == spawned["torch_threads"] == cores
    assert forked["blas_threads"] == spawned["blas_threads"] == cores


def test_without_templates_every_runner_is_spawned(
        start_server: Callable[..., ServerProcess], probe_app: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENFAL_RUNNER_TEMPLATES", "0")
    server = start_server("--no-builtin", "--app", probe_app)
    with server.client() as client:
        first = where(client)
        second = next_runner(client, server, first)
    assert "openfal.runner.template" not in first["parent"] + second["parent"]


def test_a_template_that_dies_leaves_runners_spawned_as_before(
        start_server: Callable[..., ServerProcess], probe_app: str) -> None:
    server = start_server("--no-builtin", "--app", probe_app)
    with server.client() as client:
        first = where(client)
        forked = next_runner(client, server, first)
        os.kill(forked["parent_pid"], signal.SIGKILL)
        after = next_runner(client, server, forked)
    assert "openfal.runner.template" not in after["parent"]


def test_nothing_outlives_the_server(start_server: Callable[..., ServerProcess],
                                     probe_app: str) -> None:
    server = start_server("--no-builtin", "--app", probe_app)
    with server.client() as client:
        next_runner(client, server, where(client))
    server.stop()
    wait_for(lambda: not server.tagged_pids(), timeout=10)
