"""A worker's handle on one runner process: spawn, talk to, stop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from openfal.runner.protocol import (
    Message,
    Ready,
    RequestMessage,
    SetupFailed,
    Stop,
    encode,
    read_message,
)
from openfal.secrets import KEY_VARIABLE  # the worker's key: never a runner's
from openfal.worker.templates import ForkedProcess, RunnerTemplate

if TYPE_CHECKING:
    from openfal.worker.environments import RunnerEnvironment
    from openfal.worker.worker import Attempt


class RunnerState(enum.StrEnum):
    SETUP = "setup"
    IDLE = "idle"
    RUNNING = "running"
    DRAINING = "draining"


class RunnerSetupFailed(Exception):
    """A runner could not start. ``answer`` is the (status, body) the app gave as the reason,
    when it gave one: then no other runner would do better and requests fail at once."""

    def __init__(self, reason: str, answer: tuple[int, bytes] | None = None):
        super().__init__(reason)
        self.answer = answer


OnMessage = Callable[["RunnerHandle", RequestMessage], None]
OnExit = Callable[["RunnerHandle"], Awaitable[None] | None]


class RunnerHandle:
    def __init__(self, app_id: str, app_ref: str, max_multiplexing: int,
                 env: dict[str, str] | None = None, gpus: list[str] | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.app_id = app_id
        self.app_ref = app_ref
        self.max_multiplexing = max_multiplexing
        self.env = env or {}
        self.gpus = gpus or []  # the devices it holds (GpuSet), while its process lives
        self.draining = False
        self.ready = False
        self.pid: int | None = None
        self.hints: list[str] = []
        self.modules: list[str] = []  # the library modules it imported by the end of setup
        self.in_flight: dict[str, Attempt] = {}
        self.started_at = time.time()
        self.idle_timer: asyncio.TimerHandle | None = None
        self._process: asyncio.subprocess.Process | ForkedProcess | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def state(self) -> RunnerState:
        if self.draining:
            return RunnerState.DRAINING
        if not self.ready:
            return RunnerState.SETUP
        return RunnerState.RUNNING if self.in_flight else RunnerState.IDLE

    @property
    def has_capacity(self) -> bool:
        return self.ready and not self.draining and len(self.in_flight) < self.max_multiplexing

    def describe(self) -> dict[str, Any]:
        return {"runner_id": self.id, "app_id": self.app_id, "state": self.state.value,
                "pid": self.pid, "in_flight": sorted(self.in_flight),
                "started_at": self.started_at, "hints": self.hints, "gpus": self.gpus}

    async def start(self, startup_timeout: float,
                    environment: RunnerEnvironment | None = None,
                    template: RunnerTemplate | None = None) -> None:
        """Start the process (in the app's own Python environment, if it has one: forked
        from ``template`` when it can, else spawned) and wait until its ``setup()`` has
        finished."""
        ours, theirs = socket.socketpair()
        inherited = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
        env = {**inherited, **self.env, **(environment.variables if environment else {}),
               "PYTHONUNBUFFERED": "1", "OPENFAL_RUNNER_ID": self.id}
        try:
            self._process = (template and await template.fork(self.app_ref, env,
                                                              theirs.fileno())
                             ) or await asyncio.create_subprocess_exec(
                environment.python if environment else sys.executable, "-m", "openfal.runner",
                "--app", self.app_ref, "--fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), start_new_session=True, env=env)
        finally:
            theirs.close()
        self.pid = self._process.pid
        self._reader, self._writer = await asyncio.open_connection(sock=ours)
        try:
            first = await asyncio.wait_for(read_message(self._reader), startup_timeout)
        except TimeoutError:
            self.kill()
            raise RunnerSetupFailed(f"setup() did not finish within {startup_timeout:g}s") from None
        if not isinstance(first, Ready):
            self.kill()
            if not isinstance(first, SetupFailed):
                raise RunnerSetupFailed("the runner exited during setup")
            answer = (first.status, first.body) if first.status is not None else None
            raise RunnerSetupFailed(first.error, answer)
        self.hints = first.hints
        self.modules = first.modules
        self.ready = True

    async def serve(self, on_message: OnMessage) -> None:
        """Deliver the runner's messages until its socket closes (whoever started it then
        ends the process: ``end``)."""
        assert self._reader is not None
        while (message := await read_message(self._reader)) is not None:
            on_message(self, message)  # type: ignore[arg-type]  # a runner sends only these

    def send(self, message: Message) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))

    def stop(self) -> None:
        """Let in-flight requests finish, then let the process exit on its own."""
        self.draining = True
        self.send(Stop())

    async def end(self) -> None:
        """Kill the process (if it was started) and wait until it is gone."""
        self.kill()
        if self._process is not None:
            await self._process.wait()

    def kill(self) -> None:
        """Stop the process and everything it started, now. It takes no more work."""
        self.draining = True
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        if self._writer is not None:
            self._writer.close()
