"""GPU placement (``--gpus``): each runner gets its app's GPUs in CUDA_VISIBLE_DEVICES, no
two runners share one, requests wait while every GPU is taken, and a runner's devices come
back when it goes away. No GPU is needed: the device ids are the ones the tests give."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import openfal
from openfal.errors import ConfigError
from openfal.testing import worker_process
from openfal.worker.gpus import GpuSet, parse_gpus

from conftest import wait_for

APPS = Path(__file__).parent / "apps" / "gpu_apps.py"


def app_args(*names: str) -> list[str]:
    return ["--no-builtin", *[arg for name in names for arg in ("--app", f"{APPS}::{name}")]]


def runners(client: httpx.Client) -> list[dict]:
    return client.get("/api/runners").json()["runners"]


def busy_runners(client: httpx.Client) -> list[dict]:
    return [runner for runner in runners(client) if runner["in_flight"]]


def devices(client: httpx.Client, app: str) -> str | None:
    """The devices a direct run of ``app`` was given."""
    response = client.post(f"/openfal/{app}", json={})
    assert response.status_code == 200, response.text
    return response.json()["devices"]


def queued_devices(client: httpx.Client, app: str, request_id: str) -> str | None:
    """The devices a queued request was given, once it has completed."""
    url = f"/queue/openfal/{app}/requests/{request_id}"
    wait_for(lambda: client.get(f"{url}/status").json()["status"] == "COMPLETED",
             what=f"{request_id} to complete")
    return client.get(url).json()["devices"]


# The allocator and the GPU count

class Waiter:
    """A pool in line for devices."""

    def __init__(self, gpus_needed: int):
        self.gpus_needed = gpus_needed
        self.wanted = True
        self.got: list[list[str]] = []

    def wants_gpus(self) -> bool:
        return self.wanted

    def got_gpus(self, devices: list[str]) -> None:
        self.got.append(devices)


def test_devices_are_taken_lowest_first_and_never_twice() -> None:
    gpus = GpuSet(["0", "1", "2"])
    assert gpus.take(1) == ["0"]
    assert gpus.take(2) == ["1", "2"]
    assert gpus.take(1) is None
    gpus.give_back(["1"])
    assert gpus.take(2) is None  # not enough: none are taken
    assert gpus.take(1) == ["1"]
    gpus.give_back(["2", "0"])
    assert gpus.take(2) == ["0", "2"]
    assert gpus.take(0) == []


def test_unmanaged_gpus_give_nothing_and_tell_nothing() -> None:
    gpus = GpuSet(None)
    assert gpus.take(4) == [] and gpus.fits(4)
    assert gpus.environment([]) == {}
    assert GpuSet([]).environment([]) == {"CUDA_VISIBLE_DEVICES": ""}
    assert not GpuSet(["0"]).fits(2)
    assert GpuSet([]).too_few(1) == "a runner needs 1 GPU; this worker has none"


def test_freed_devices_go_to_the_first_in_line_that_still_wants_them() -> None:
    gpus = GpuSet(["0", "1"])
    held = gpus.take(2)
    assert held == ["0", "1"]
    pair, gone, single = Waiter(2), Waiter(1), Waiter(1)
    for waiter in (pair, gone, single):
        gpus.wait(waiter)
    gpus.wait(pair)  # already in line: keeps its place
    gpus.give_back(["1"])
    assert pair.got == [] and gone.got == [] and single.got == []  # the pair is first
    assert gpus.take(1) is None  # nor does a newcomer pass the line
    gpus.give_back(["0"])
    assert pair.got == [["0", "1"]]
    gone.wanted = False
    gpus.give_back(["0", "1"])
    assert gone.got == [] and single.got == [["0"]]
    assert gpus.take(1) == ["1"]


def test_parse_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_gpus(None) is None
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus(" GPU-5d1c , GPU-9f2e") == ["GPU-5d1c", "GPU-9f2e"]
    with pytest.raises(ConfigError, match="1 given more than once"):
        parse_gpus("0,1,1")
    with pytest.raises(ConfigError, match="empty device id"):
        parse_gpus("0,,1")
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert parse_gpus("all") == []


def test_gpu_count() -> None:
    class Explicit(openfal.App, num_gpus=2, machine_type="GPU-H100"):
        pass

    class ExplicitNone(openfal.App):
        machine_type = "GPU-A100"
        num_gpus = 0

    class A100(openfal.App):
        machine_type = "GPU-A100"

    class Either(openfal.App):
        machine_type = ["GPU-H100", "GPU-A100"]

    class Lowercase(openfal.App):
        machine_type = "gpu"

    class Inherits(Explicit):
        pass

    assert Explicit.gpu_count() == 2 and Inherits.gpu_count() == 2
    assert ExplicitNone.gpu_count() == 0
    assert A100.gpu_count() == 1 and Either.gpu_count() == 1 and Lowercase.gpu_count() == 1
    assert openfal.App.gpu_count() == 0  # machine_type "S"


# Servers

def test_runners_never_share_a_gpu_and_requests_wait_for_one(start_server,
                                                             tmp_path: Path) -> None:
    server = start_server(*app_args("OneGpu", "TwoGpus", "NoGpu"), "--gpus", "0,1")
    gate = tmp_path / "gate"
    with server.client() as client:
        ids = [client.post("/queue/openfal/one-gpu", json={"gate": str(gate)}).json()
               ["request_id"] for _ in range(4)]
        wait_for(lambda: len(busy_runners(client)) >= 2, what="two runners at work")
        listed = subprocess.run([sys.executable, "-m", "openfal", "runners", "--json",
                                 "--server", server.url], capture_output=True, text=True,
                                timeout=60, check=True)
        # Two GPUs: no third runner, though max_concurrency is 3 and two requests wait.
        listing = json.loads(listed.stdout)["runners"]
        assert sorted(r["gpus"] for r in listing) == [["0"], ["1"]]
        assert sorted(r["gpus"] for r in busy_runners(client)) == [["0"], ["1"]]
        gate.touch()
        seen = {queued_devices(client, "one-gpu", request_id) for request_id in ids}
        assert seen == {"0", "1"}
        # Both devices are held by idle one-gpu runners until they are reaped (keep_alive).
        assert devices(client, "two-gpus") == "0,1"
        assert devices(client, "no-gpu") == ""


def test_a_device_comes_back_whenever_its_runner_goes(start_server) -> None:
    server = start_server(*app_args("OneGpu", "OtherGpu", "BrokenGpu", "TwoGpus"),
                          "--gpus", "0")
    with server.client() as client:
        assert devices(client, "one-gpu") == "0"
        wait_for(lambda: not runners(client), what="the idle runner to be reaped")
        assert devices(client, "other-gpu") == "0"
        failed = client.post("/openfal/broken-gpu", json={})  # its setups fail, then it fails
        assert failed.status_code == 503 and "no weights" in failed.json()["detail"]
        assert devices(client, "one-gpu") == "0"

        too_big = client.post("/openfal/two-gpus", json={})
        assert too_big.status_code == 503
        assert too_big.json()["detail"].endswith(
            "a runner needs 2 GPUs; this worker has 1 GPU (0)")


def test_without_gpus_runners_see_what_the_server_sees(start_server,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    server = start_server(*app_args("OneGpu", "NoGpu"))
    with server.client() as client:
        assert devices(client, "one-gpu") == os.environ["CUDA_VISIBLE_DEVICES"]
        assert devices(client, "no-gpu") == os.environ["CUDA_VISIBLE_DEVICES"]
        assert {tuple(r["gpus"]) for r in runners(client)} == {()}


def test_a_remote_worker_places_its_runners_on_its_gpus(start_server, tmp_path: Path) -> None:
    gateway = start_server("--no-runners", *app_args("OneGpu"))
    with (worker_process(tmp_path / "worker", gateway.url, "unused", [f"{APPS}::OneGpu"],
                         "--gpus", "0"),
          gateway.client() as client):
        assert devices(client, "one-gpu") == "0"
