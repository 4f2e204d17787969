"""A worker's runner templates (runner/template.py): one per Python environment, started
once the first runner of that environment is up, then asked to fork the runners after it.

The first runner is spawned as a plain process; the template imports in the background
after it, so nothing waits on it and its imports don't slow the first runner's. A template
that fails, refuses (threads or CUDA after its imports) or exits is not used again:
runners are spawned as before. A forked runner is not this process's child: its exit is
watched through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any

from openfal.secrets import KEY_VARIABLE  # the worker's key: never a runner's

log = logging.getLogger(__name__)

ENABLED_VARIABLE = "OPENFAL_RUNNER_TEMPLATES"
READY_TIMEOUT_SECONDS = 300.0  # importing torch and friends on a slow disk


class ForkedProcess:
    """A runner forked by a template: its pid, and its exit (through a pidfd)."""

    def __init__(self, pid: int):
        self.pid = pid
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[None] = loop.create_future()
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already
            self._pidfd = None
            self._exited.set_result(None)
            return
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(None)

    async def wait(self) -> None:
        await asyncio.shield(self._exited)


class RunnerTemplate:
    def __init__(self, python: str, env: dict[str, str], preload: Iterable[str],
                 first_runner_modules: list[str]):
        self.python = python
        self.env = env
        self.preload = sorted(set(preload))  # the apps' runtime_modules
        self.first_runner_modules = first_runner_modules
        self._control: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Task[bool] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start it; it takes forks once its imports are done."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._control = ours
        self._ready = asyncio.get_running_loop().create_task(self._start(theirs))

    async def _start(self, theirs: socket.socket) -> bool:
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.python, "-m", "openfal.runner.template", "--fd", str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE, pass_fds=(theirs.fileno(),),
                start_new_session=True, env=self.env)
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(
                [*self.preload, *self.first_runner_modules]).encode())
            self._process.stdin.close()
        except OSError as exc:
            log.warning("runner template not started: %s", exc)
            self.stop()
            return False
        finally:
            theirs.close()
        try:
            answer = await asyncio.wait_for(self._answer(), READY_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, ValueError) as exc:
            answer = {"error": f"no answer ({exc!r})"}
        if answer.get("ready"):
            log.info("runner template ready (pid %d, %s and %d modules of the first runner's)",
                     self._process.pid, ", ".join(self.preload) or "openfal",
                     len(self.first_runner_modules))
            return True
        log.warning("runner template not used: %s", answer.get("error", answer))
        self.stop()
        return False

    async def _answer(self) -> dict[str, Any]:
        assert self._control is not None
        data = await asyncio.get_running_loop().sock_recv(self._control, 65536)
        if not data:
            raise OSError("the template exited")
        return json.loads(data)

    def describe(self) -> dict[str, Any]:
        if self._ready is None or not self._ready.done():
            state = "starting"
        else:
            state = "ready" if self._ready.result() and self._control is not None else "unused"
        return {"python": self.python, "pid": self._process.pid if self._process else None,
                "state": state, "preload": self.preload,
                "first_runner_modules": len(self.first_runner_modules)}

    async def fork(self, app_ref: str, env: dict[str, str], fd: int) -> ForkedProcess | None:
        """A runner of ``app_ref`` on socket ``fd`` with environment ``env``, forked; None
        when the template cannot (not ready yet, failed or gone): spawn it instead."""
        if self._ready is None or not self._ready.done() or not self._ready.result():
            return None
        async with self._lock:
            control = self._control
            if control is None:
                return None
            request = json.dumps({"app": app_ref, "env": env}).encode()
            try:
                socket.send_fds(control, [request], [fd])
                answer = await self._answer()
            except (OSError, ValueError) as exc:
                log.warning("runner template lost (%r): spawning runners instead", exc)
                self.stop()
                return None
        if "pid" not in answer:
            log.warning("runner template refused a fork: %s", answer)
            return None
        return ForkedProcess(answer["pid"])

    def stop(self) -> None:
        """Stop the template (runners it forked go on: they are the worker's)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)

    async def close(self) -> None:
        self.stop()
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        if self._process is not None:
            await self._process.wait()


class Templates:
    """A worker's templates, by Python environment (``OPENFAL_RUNNER_TEMPLATES=0``: none)."""

    def __init__(self) -> None:
        self.enabled = os.environ.get(ENABLED_VARIABLE, "1") != "0"
        self._templates: dict[tuple[str, tuple[tuple[str, str], ...]], RunnerTemplate] = {}

    def for_environment(self, variables: dict[str, str], python: str | None
                        ) -> RunnerTemplate | None:
        """The template of the environment that ``python`` and ``variables`` describe, if
        one was started (it serves forks once ready)."""
        return self._templates.get(self._key(variables, python))

    def prepare(self, variables: dict[str, str], python: str | None,
                preload: Iterable[str], runner_modules: list[str]) -> None:
        """Start that environment's template if there is none, to import ``preload`` and
        ``runner_modules`` (what the runner just set up had imported). Called once a runner
        of it is up: the template's imports would otherwise compete with that runner's."""
        key = self._key(variables, python)
        if self.enabled and key not in self._templates:
            template = RunnerTemplate(key[0], self._environment(variables), preload,
                                      runner_modules)
            self._templates[key] = template
            template.start()

    @staticmethod
    def _key(variables: dict[str, str], python: str | None
             ) -> tuple[str, tuple[tuple[str, str], ...]]:
        return python or sys.executable, tuple(sorted(variables.items()))

    @staticmethod
    def _environment(variables: dict[str, str]) -> dict[str, str]:
        inherited = {name: value for name, value in os.environ.items() if name != KEY_VARIABLE}
        return {**inherited, **variables, "PYTHONUNBUFFERED": "1"}

    def describe(self) -> list[dict[str, Any]]:
        return [template.describe() for template in self._templates.values()]

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self._templates.values()),
                             return_exceptions=True)
        self._templates.clear()
