"""A worker's GPUs (``--gpus``): each runner that needs some gets its own, never shared.

Devices are handed out whole, lowest first, and come back when a runner's process is gone.
Pools that find too few free wait in line, first come first served: freed devices go to the
first in line as soon as it can have all it asked for (no pool needing many is starved by
pools needing one).
"""

from __future__ import annotations

import logging
import subprocess
from typing import Protocol

from openfal.errors import ConfigError

log = logging.getLogger(__name__)

CUDA_VARIABLE = "CUDA_VISIBLE_DEVICES"
NVIDIA_SMI = ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]


class GpuWaiter(Protocol):
    """A pool that waits for devices to start a runner on."""

    @property
    def gpus_needed(self) -> int: ...

    def wants_gpus(self) -> bool:
        """Whether it still wants them (demand may have gone meanwhile)."""
        ...

    def got_gpus(self, devices: list[str]) -> None:
        """The devices are its own now."""
        ...


def parse_gpus(value: str | None) -> list[str] | None:
    """``--gpus``: None (not managed), ``all`` (what nvidia-smi lists) or ``0,1,...`` /
    device UUIDs."""
    if value is None:
        return None
    if value.strip().lower() == "all":
        return discover_gpus()
    devices = [token.strip() for token in value.split(",")]
    if not all(devices):
        raise ConfigError(f"--gpus {value!r}: an empty device id (use all or 0,1,...)")
    repeated = sorted({device for device in devices if devices.count(device) > 1})
    if repeated:
        raise ConfigError(f"--gpus {value!r}: {', '.join(repeated)} given more than once")
    return devices


def discover_gpus() -> list[str]:
    """The devices nvidia-smi lists; none when it is missing or fails."""
    try:
        listed = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=30,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("--gpus all: nvidia-smi could not list the GPUs (%s); runners get none",
                    exc)
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]


class GpuSet:
    """The devices of one worker, shared by its pools. ``devices`` None: GPUs are not
    managed (runners get every device, as the worker's own environment says)."""

    def __init__(self, devices: list[str] | None):
        self.managed = devices is not None
        self.devices = list(devices or [])
        self._free = set(self.devices)
        self._line: list[GpuWaiter] = []  # pools waiting for devices, in the order they came

    def take(self, count: int) -> list[str] | None:
        """``count`` free devices, now the caller's, lowest first (in the order ``--gpus``
        lists them); None if fewer are free or pools wait in line before the caller."""
        if count == 0 or not self.managed:
            return []
        self._serve_line()  # those in line that want nothing more hold no place
        if self._line or len(self._free) < count:
            return None
        return self._take_lowest(count)

    def give_back(self, devices: list[str]) -> None:
        self._free.update(devices)
        self._serve_line()

    def wait(self, waiter: GpuWaiter) -> None:
        """Queue ``waiter`` (it keeps its place if already queued): it gets its devices
        through ``got_gpus`` once they are free and its turn has come."""
        if waiter not in self._line:
            self._line.append(waiter)

    def fits(self, count: int) -> bool:
        """Whether a runner needing ``count`` devices can ever run here."""
        return not self.managed or count <= len(self.devices)

    def too_few(self, count: int) -> str:
        """Why a runner needing ``count`` devices cannot run here."""
        has = f"{_gpus(len(self.devices))} ({', '.join(self.devices)})" if self.devices else "none"
        return f"a runner needs {_gpus(count)}; this worker has {has}"

    def environment(self, devices: list[str]) -> dict[str, str]:
        """What a runner holding ``devices`` is told: only those (none: an empty list, so
        that it cannot reach a device another runner holds)."""
        return {CUDA_VARIABLE: ",".join(devices)} if self.managed else {}

    def _serve_line(self) -> None:
        # Re-read at each turn: a pool served may queue again, or give devices back.
        while self._line:
            first = self._line[0]
            if first.wants_gpus():
                if len(self._free) < first.gpus_needed:
                    return
                self._line.pop(0)
                first.got_gpus(self._take_lowest(first.gpus_needed))
            else:
                self._line.pop(0)

    def _take_lowest(self, count: int) -> list[str]:
        taken = [device for device in self.devices if device in self._free][:count]
        self._free.difference_update(taken)
        return taken


def _gpus(count: int) -> str:
    return f"{count} GPU{'' if count == 1 else 's'}"
