"""``openfal deploy``: apps added to and rolled out on a running server, no restart.

The deployed app is written with the hosted SDK (``import fal``), ships a local module
(``local_python_modules``) and a data file (``app_files``), and says which revision of its
code answered. A deploy is done the way a user does it, with the ``openfal`` command.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from openfal.app.bundle import BundleError, make_bundle, unpack
from openfal.testing import ServerProcess

from conftest import APPS, tarred, wait_for

APP = '''\
import time
from pathlib import Path

import fal
from pydantic import BaseModel

from greeting import WORD


class In(BaseModel):
    name: str
    seconds: float = 0


class Out(BaseModel):
    text: str
    revision: int
    note: str


class Hello(fal.App, name="hello", max_concurrency=2, max_multiplexing=16, keep_alive=60):
    local_python_modules = ["greeting"]
    app_files = ["data/note.txt"]

    def setup(self) -> None:
        self.note = (Path(__file__).parent / "data" / "note.txt").read_text().strip()

    @fal.endpoint("/")
    def run(self, input: In) -> Out:
        time.sleep(input.seconds)
        return Out(text=f"{WORD} {input.name}", revision=REVISION, note=self.note)
'''


def write_app(folder: Path, revision: int, word: str = "hello") -> str:
    """The app's folder at ``revision``; its reference for ``openfal deploy``."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(APP.replace("REVISION", str(revision)))
    (folder / "greeting.py").write_text(f"WORD = {word!r}\n")
    (folder / "data" / "note.txt").write_text(f"note of revision {revision}\n")
    return f"{folder / 'app.py'}::Hello"


def openfal(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "openfal", *args, "--server", server.url],
                          capture_output=True, text=True, timeout=120)


def deploy(server: ServerProcess, ref: str, *args: str) -> dict:
    done = openfal(server, "deploy", ref, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def hello(client: httpx.Client, name: str = "ada", seconds: float = 0) -> httpx.Response:
    return client.post("/openfal/hello", json={"name": name, "seconds": seconds})


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--no-builtin", "--app", f"{APPS}::Work")


def test_deploy_redeploy_rollback_and_delete(server: ServerProcess, tmp_path: Path) -> None:
    ref = write_app(tmp_path / "app", 1)
    first = deploy(server, ref)
    assert (first["app_id"], first["revision"]) == ("openfal/hello", 1)
    assert first["endpoints"] == [f"{server.url}/openfal/hello"]
    with server.client() as client:
        answer = hello(client).json()
        assert answer == {"text": "hello ada", "revision": 1, "note": "note of revision 1"}

        write_app(tmp_path / "app", 2, word="howdy")
        assert deploy(server, ref)["revision"] == 2
        assert hello(client).json() == {"text": "howdy ada", "revision": 2,
                                        "note": "note of revision 2"}
        listing = json.loads(openfal(server, "apps", "revisions", "openfal/hello",
                                     "--json").stdout)
        assert listing["current"] == 2
        assert [r["revision"] for r in listing["revisions"]] == [1, 2]

        rolled = openfal(server, "apps", "rollback", "openfal/hello", "1")
        assert rolled.returncode == 0, rolled.stderr
        assert hello(client).json()["revision"] == 1
        assert deploy(server, ref)["revision"] == 3  # numbers are never given twice

        # More than its 2 runners x 16 take at once: some still wait when it is deleted.
        queued = [client.post("/queue/openfal/hello", json={"name": "x", "seconds": 2})
                  for _ in range(40)]
        deleted = openfal(server, "apps", "delete", "openfal/hello")
        assert deleted.returncode == 0, deleted.stderr
        assert hello(client).status_code == 404
        wait_for(lambda: all(client.get(r.json()["status_url"]).json()["status"] == "COMPLETED"
                             for r in queued))
        outcomes = [client.get(r.json()["response_url"]) for r in queued]
    statuses = {response.status_code for response in outcomes}
    assert statuses <= {200, 404}, statuses  # ran before the delete, or failed by it
    failed = [r.json() for r in outcomes if r.status_code == 404]
    assert failed and all(body["error_type"] == "app_deleted" for body in failed), failed
    assert openfal(server, "apps", "revisions", "openfal/hello").returncode == 1


def test_a_deploy_during_load_drops_no_request(server: ServerProcess, tmp_path: Path) -> None:
    """Requests keep coming while revision 2 rolls out: every one succeeds; those sent
    after the deploy answered run on revision 2, and some before it ran on revision 1."""
    ref = write_app(tmp_path / "app", 1)
    deploy(server, ref)
    deployed_at: list[float] = []
    stop = threading.Event()

    def load(worker: int) -> list[tuple[float, int, dict]]:
        seen = []
        with server.client() as client:
            n = 0
            while not stop.is_set():
                sent = time.monotonic()
                if n % 2:
                    response = client.post("/queue/openfal/hello",
                                           json={"name": f"{worker}-{n}", "seconds": 0.1})
                    handle = response.json()
                    wait_for(lambda h=handle: client.get(h["status_url"]).json()["status"]
                             == "COMPLETED")
                    response = client.get(handle["response_url"])
                else:
                    response = hello(client, f"{worker}-{n}", 0.1)
                seen.append((sent, response.status_code, response.json()))
                n += 1
        return seen

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(load, worker) for worker in range(8)]
        time.sleep(1.0)
        write_app(tmp_path / "app", 2)
        assert deploy(server, ref)["revision"] == 2
        deployed_at.append(time.monotonic())
        time.sleep(1.5)
        stop.set()
        results = [item for future in running for item in future.result()]
    assert {status for _, status, _ in results} == {200}, [r for r in results if r[1] != 200]
    after = [body["revision"] for sent, _, body in results if sent > deployed_at[0]]
    before = [body["revision"] for sent, _, body in results if sent <= deployed_at[0]]
    assert after and set(after) == {2}
    assert 1 in before


def test_a_worker_elsewhere_serves_deployed_apps_without_being_told(
        start_server: Callable[..., ServerProcess], start_worker: Callable[..., ServerProcess],
        tmp_path: Path) -> None:
    gateway = start_server("--no-runners", "--no-builtin", "--app", f"{APPS}::Work")
    start_worker(gateway, "w1", f"{APPS}::Work")
    ref = write_app(tmp_path / "app", 1)
    deploy(gateway, ref)
    with gateway.client() as client:
        assert hello(client).json()["revision"] == 1
        write_app(tmp_path / "app", 2)
        deploy(gateway, ref)
        # The worker switches within a sync; until then its old pool is refused new work.
        assert hello(client).json()["revision"] == 2


def test_deploys_that_cannot_be_served_are_refused(server: ServerProcess,
                                                   tmp_path: Path) -> None:
    with server.client() as client:
        garbage = client.post("/api/deployments", params={"ref": "app.py::Hello"},
                              content=b"not a tarball")
        assert garbage.status_code == 422, garbage.text
        assert garbage.json()["error_type"] == "invalid_app"
        bad_ref = client.post("/api/deployments", params={"ref": "../app.py::Hello"},
                              content=tarred({"app.py": b""}))
        assert bad_ref.status_code == 422
        assert bad_ref.json()["detail"][0]["loc"] == ["query", "ref"]
        broken = client.post("/api/deployments", params={"ref": "app.py::Hello"},
                             content=tarred({"app.py": b"import fal\nraise RuntimeError('no')\n"}))
        assert broken.status_code == 422
        assert "RuntimeError: no" in broken.json()["detail"]
        escape = client.post("/api/deployments", params={"ref": "app.py::Hello"},
                             content=tarred({"../outside.py": b"x = 1\n"}))
        assert escape.status_code == 422
        assert not (server.data_dir / "outside.py").exists()
        taken = client.post("/api/deployments", params={"ref": "app.py::Work"},
                            content=tarred({"app.py": (Path(APPS).read_bytes())}))
        assert taken.status_code == 409, taken.text
        assert taken.json()["error_type"] == "endpoint_taken"
        assert client.get("/api/deployments").json() == {"apps": []}


SLOW_IMPORT = '''\
import time
from pathlib import Path

import openfal

MARKERS = Path(MARKER_DIR)
(MARKERS / "importing").touch()
deadline = time.monotonic() + 30
while not (MARKERS / "go").exists():  # an import that takes long (torch at the top, ...)
    if time.monotonic() > deadline:
        raise RuntimeError("nobody said go: the gateway was stuck while this imported")
    time.sleep(0.01)


class Slow(openfal.App, app_name="slow"):
    @openfal.endpoint("/")
    def run(self) -> dict:
        return {}
'''


def test_a_deploy_whose_import_takes_long_leaves_the_gateway_answering(
        server: ServerProcess, tmp_path: Path) -> None:
    source = SLOW_IMPORT.replace("MARKER_DIR", repr(str(tmp_path)))
    with server.client(timeout=120) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        deploying = pool.submit(client.post, "/api/deployments", params={"ref": "app.py::Slow"},
                                content=tarred({"app.py": source.encode()}))
        wait_for(lambda: (tmp_path / "importing").exists(), what="the app's import to start")
        with server.client(timeout=10) as other:
            assert other.get("/health").status_code == 200  # answered mid-import
        (tmp_path / "go").touch()
        assert deploying.result().status_code == 201, deploying.result().text


def test_only_admin_keys_deploy(start_server: Callable[..., ServerProcess],
                                tmp_path: Path) -> None:
    server = start_server("--no-builtin", "--app", f"{APPS}::Work", auth=True)
    admin = {"authorization": f"Key {server.admin_key}"}
    with server.client(headers=admin) as client:
        key = client.post("/api/keys", json={"scope": "API", "name": "caller"}).json()
    bundle = make_bundle(write_app(tmp_path / "app", 1))
    with server.client(headers={"authorization": f"Key {key['key']}"}) as client:
        refused = client.post("/api/deployments", params={"ref": bundle.ref},
                              content=bundle.data)
        assert refused.status_code == 403
        assert client.get("/api/deployments").status_code == 403


def test_bundles_hold_what_the_app_ships_and_are_reproducible(tmp_path: Path) -> None:
    ref = write_app(tmp_path / "app", 1)
    first, second = make_bundle(ref), make_bundle(ref)
    assert first.data == second.data
    assert first.ref == "app.py::Hello"
    unpack(first.data, tmp_path / "out")
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")
                  if p.is_file()) == [".openfal-complete", "app.py", "data/note.txt",
                                      "greeting.py"]


def test_app_files_outside_the_app_folder_are_refused(tmp_path: Path) -> None:
    ref = write_app(tmp_path / "app", 1)
    source = Path(ref.partition("::")[0])
    source.write_text(source.read_text().replace('"data/note.txt"', '"../secret.txt"'))
    (tmp_path / "secret.txt").write_text("no")
    with pytest.raises(BundleError, match="outside the app's folder"):
        make_bundle(ref)


def test_deployed_apps_survive_a_crash_of_the_gateway(start_server: Callable[..., ServerProcess],
                                                      tmp_path: Path) -> None:
    args = ("--no-builtin", "--app", f"{APPS}::Work")
    server = start_server(*args)
    ref = write_app(tmp_path / "app", 1)
    deploy(server, ref)
    write_app(tmp_path / "app", 2)
    deploy(server, ref)
    assert openfal(server, "apps", "rollback", "openfal/hello", "1").returncode == 0
    server.kill()  # kill -9: nothing is written on the way out
    again = start_server(*args, data_dir=server.data_dir)
    with again.client() as client:
        assert hello(client).json()["revision"] == 1


def test_deployment_requests_that_are_wrong_get_clear_errors(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.post("/api/deployments/openfal/nothing/rollback",
                           json={"revision": 1}).status_code == 404
        assert client.delete("/api/deployments/openfal/nothing").status_code == 404
        assert client.get("/api/deployments/openfal/nothing").status_code == 404
        bad_name = client.post("/api/deployments", params={"ref": "app.py::Hello",
                                                           "name": "Upper/Case"},
                               content=tarred({"app.py": b""}))
        assert bad_name.status_code == 422
        assert bad_name.json()["detail"][0]["loc"] == ["query", "name"]
        reserved = client.post("/api/deployments", params={"ref": "app.py::Hello",
                                                           "name": "api/hello"},
                               content=tarred({"app.py": b""}))
        assert reserved.status_code == 422

        def too_much():
            for _ in range(65):
                yield b"\0" * 2**20

        oversized = client.post("/api/deployments", params={"ref": "app.py::Hello"},
                                content=too_much())
        assert oversized.status_code == 413


def test_a_rollback_to_a_revision_that_does_not_exist_changes_nothing(
        server: ServerProcess, tmp_path: Path) -> None:
    deploy(server, write_app(tmp_path / "app", 1))
    with server.client() as client:
        missing = client.post("/api/deployments/openfal/hello/rollback", json={"revision": 7})
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "revision"]
        assert hello(client).json()["revision"] == 1
