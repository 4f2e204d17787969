"""Per-app Python environments: an app's ``requirements`` are installed with uv into an
environment of its own, layered over the server's packages (nothing the server has is
installed again), cached by requirement set, built once under a lock, rebuilt when a build
was cut short; a failed install fails the app's waiting requests at once, saying why.

The packages installed here are small and pure Python (python-slugify, text-unidecode, six);
the server's environment (this one) has no slugify and has six 1.17.0, pydantic and torch."""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import openfal
from openfal.testing import ServerProcess, worker_process
from openfal.worker.environments import (
    COMPLETE_MARKER,
    AppEnvironments,
    RunnerEnvironment,
    ServerPackages,
    normalised,
    requirement_layers,
    site_packages_of,
)

from conftest import wait_for

ENV_APPS = Path(__file__).parent / "apps" / "env_apps.py"
APP_NAMES = ("Slugify", "SlugifyToo", "Satisfied", "Unavailable")
SLUGIFY = ["python-slugify==8.0.4"]
MISSING = "openfal-no-such-package-xyz==1.0"
BUILDING = "building environment"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--no-builtin", "--no-auth",
            *(arg for name in APP_NAMES for arg in ("--app", f"{ENV_APPS}::{name}"))]
    with ServerProcess(tmp_path_factory.mktemp("envs"), args) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def build_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="openfal.worker.environments")
    return caplog


def builds(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.message for record in caplog.records if BUILDING in record.message]


def run_in(environment: RunnerEnvironment, code: str) -> str:
    done = subprocess.run([environment.python, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# Requirements, and what the server has

def test_requirements_are_install_steps_in_one_spelling() -> None:
    assert requirement_layers([]) == []
    assert [[str(r) for r in layer] for layer in requirement_layers(["six", "torch>=2"])] == [
        ["six", "torch>=2"]]
    assert len(requirement_layers([["torch"], ["six", "pillow"]])) == 2
    assert (normalised(Requirement("Python_Slugify[B,a] <2, >=1"))
            == normalised(Requirement("python-slugify[a,b]>=1,<2")))


def test_what_the_server_has_satisfies_requirements() -> None:
    server = ServerPackages.current()
    assert importlib.util.find_spec("slugify") is None, "the server must lack slugify"
    for spec in ("torch", "pydantic>=2", "Pillow", "diffusers[torch]",
                 'anything-at-all; python_version < "3"'):
        assert server.satisfies(Requirement(spec)), spec
    for spec in ("python-slugify", "pydantic<2", "six>=99", "pydantic[email]",
                 "six @ https://example.invalid/six.whl"):
        assert not server.satisfies(Requirement(spec)), spec


def test_an_invalid_requirement_fails_when_the_app_is_loaded() -> None:
    with pytest.raises(ValueError, match=r"Bad: invalid requirement 'not a spec!'"):
        class Bad(openfal.App):
            requirements = ["six", "not a spec!"]

    with pytest.raises(ValueError, match=r"requirements must be a list"):
        class OneString(openfal.App):
            requirements = "torch"  # would otherwise be t, o, r, c and h

    class Layered(openfal.App):  # install steps: lists of specs
        requirements = [["six"], ["python-slugify>=8"]]


async def test_requirements_the_server_has_build_nothing(tmp_path: Path,
                                                         build_log: pytest.LogCaptureFixture
                                                         ) -> None:
    environments = AppEnvironments(tmp_path / "environments")
    assert await environments.prepare(["pydantic", "torch"]) is None
    assert await environments.prepare([["pillow"], ["torch>=2", "diffusers[torch]"]]) is None
    assert not (tmp_path / "environments").exists() and not builds(build_log)


# Building, layering and the cache

async def test_an_environment_is_built_once_and_layered_over_the_server(
        tmp_path: Path, build_log: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "environments"
    environments = AppEnvironments(cache)
    # Two runners starting at once, of two apps with the same requirements spelt otherwise.
    prepared = await asyncio.gather(environments.prepare(SLUGIFY),
                                    environments.prepare(["Python_Slugify == 8.0.4"]))
    assert prepared[0] == prepared[1] and prepared[0] is not None
    assert len(builds(build_log)) == 1
    environment = Path(prepared[0].python).parent.parent
    installed = sorted(p.name for p in site_packages_of(environment).glob("*.dist-info"))
    assert installed == ["python_slugify-8.0.4.dist-info", "text_unidecode-1.3.dist-info"], (
        "only what the server lacks is installed (no torch, no view of the server's packages)")
    places = json.loads(run_in(prepared[0], "import json, slugify, pydantic, openfal; "
                                            "print(json.dumps([slugify.__file__, "
                                            "pydantic.__file__, openfal.__file__]))"))
    assert places[0].startswith(str(environment)), "the app's packages come from its environment"
    assert not places[1].startswith(str(environment)) and places[2] == openfal.__file__

    marker = environment / COMPLETE_MARKER
    built_at = marker.stat().st_mtime_ns
    assert await AppEnvironments(cache).prepare(SLUGIFY) == prepared[0]
    assert marker.stat().st_mtime_ns == built_at and len(builds(build_log)) == 1


async def test_the_apps_own_version_takes_precedence(tmp_path: Path) -> None:
    assert ServerPackages.current().version("six") == Version("1.17.0")
    environment = await AppEnvironments(tmp_path).prepare(["six==1.16.0"])
    assert environment is not None
    assert run_in(environment, "import six; print(six.__version__)") == "1.16.0"


async def test_a_half_built_environment_is_built_again(tmp_path: Path,
                                                       build_log: pytest.LogCaptureFixture
                                                       ) -> None:
    environments = AppEnvironments(tmp_path)
    steps = [["text-unidecode==1.3"], SLUGIFY]  # installed in this order
    environment = await environments.prepare(steps)
    assert environment is not None
    folder = Path(environment.python).parent.parent
    (folder / COMPLETE_MARKER).unlink()  # as after a kill -9 mid-install
    (folder / "left-over").write_text("")
    assert await environments.prepare(steps) == environment
    assert (folder / COMPLETE_MARKER).exists() and not (folder / "left-over").exists()
    assert len(builds(build_log)) == 2
    assert any("incomplete" in record.message for record in build_log.records)
    assert run_in(environment, "import slugify; print(slugify.slugify('A B'))") == "a-b"


# A worker asking for an environment: prints where it is kept ("where"), or prepares it.
WORKER_SCRIPT = """
import asyncio, logging, sys
from pathlib import Path
from openfal.worker.environments import AppEnvironments, requirement_layers
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
environments = AppEnvironments(Path(sys.argv[1]))
if sys.argv[2] == "where":
    print(environments.folder_for(requirement_layers(sys.argv[3:])))
else:
    print(asyncio.run(environments.prepare(sys.argv[3:])).python)
"""


def test_two_workers_asking_at_once_build_it_once(tmp_path: Path) -> None:
    def worker(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(tmp_path), *args,
                                 "text-unidecode==1.3"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    folder = Path(worker("where").communicate(timeout=60)[0].strip())
    with folder.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as if a third worker were building it
        workers = [worker("prepare") for _ in range(2)]
        for process in workers:
            assert process.stdout is not None
            next(line for line in process.stdout if "waiting for its build" in line)
    outputs = [process.communicate(timeout=60)[0] for process in workers]
    assert sum(BUILDING in output for output in outputs) == 1, outputs
    assert all(output.strip().endswith(str(folder / "bin" / "python")) for output in outputs)


# Through a server

def test_an_app_runs_with_its_requirements(server: ServerProcess, client: httpx.Client) -> None:
    environments = server.data_dir / "environments"
    answers = [client.post(f"/openfal/{app}", json={"text": "Hello World"})
               for app in ("env-slugify", "env-slugify-too")]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["slug"] == "hello-world"
        assert answer.json()["module"].startswith(str(environments))
    assert answers[0].json()["python"] == answers[1].json()["python"], "one environment"
    assert sum(BUILDING in line and "slugify" in line.lower() for line in server.output) == 1
    assert any("+ python-slugify==8.0.4" in line for line in server.output), (
        "the installer's output is in the server's log")


def test_an_app_whose_requirements_the_server_has_runs_in_the_servers_python(
        client: httpx.Client) -> None:
    answer = client.post("/openfal/env-satisfied", json={})
    assert answer.status_code == 200, answer.text
    assert answer.json()["python"] == sys.executable


def test_a_failed_install_fails_the_waiting_request_at_once(server: ServerProcess,
                                                            client: httpx.Client) -> None:
    started = time.monotonic()
    submitted = client.post("/queue/openfal/env-unavailable", json={})
    assert submitted.status_code == 200, submitted.text
    url = f"/queue/openfal/env-unavailable/requests/{submitted.json()['request_id']}"
    wait_for(lambda: client.get(f"{url}/status").json()["status"] == "COMPLETED",
             timeout=30, what="the request to fail")
    assert time.monotonic() - started < 20
    result = client.get(url)
    assert result.status_code == 500
    body = result.json()
    assert body["error_type"] == "runner_setup_failed"
    assert MISSING in body["detail"] and "not found in the package registry" in body["detail"]
    assert "Traceback" not in body["detail"]
    assert any("openfal.worker.environments" in line and "not found in the package registry"
               in line for line in server.output), "uv's output is in the server's log"


def test_a_remote_worker_keeps_environments_where_it_is_told(start_server,
                                                            tmp_path: Path) -> None:
    gateway = start_server("--no-runners", "--no-builtin", "--app", f"{ENV_APPS}::Slugify")
    cache = tmp_path / "worker-environments"
    with worker_process(tmp_path / "worker", gateway.url, "unused", [f"{ENV_APPS}::Slugify"],
                        "--environments-dir", str(cache)), gateway.client() as client:
        answer = client.post("/openfal/env-slugify", json={"text": "Remote Worker"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["slug"] == "remote-worker"
    assert answer.json()["module"].startswith(str(cache))
