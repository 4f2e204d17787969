"""A worker: runner processes for some apps, claiming their work through a link.

The same code serves ``openfal serve``'s own runners (the link is the gateway's dispatcher,
in process) and ``openfal worker`` on another host (the link is HTTP to a gateway). It
claims only as much work as its runners have free slots, keeps the leases of what it runs
alive, stops what the platform says was cancelled or is no longer its to run, and reports
every attempt's end, its own failures included (a runner that died, a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from openfal.app.registry import ServedApp
from openfal.runner.protocol import Cancel, RequestMessage, Result
from openfal.secrets import SecretBox
from openfal.worker.environments import AppEnvironments
from openfal.worker.gpus import GpuSet
from openfal.worker.link import Assignment, WorkLink
from openfal.worker.pool import AppPool
from openfal.worker.runners import RunnerHandle, RunnerSetupFailed
from openfal.worker.templates import Templates

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30.0


@dataclass(eq=False)
class Attempt:
    assignment: Assignment
    runner: RunnerHandle
    pool: AppPool
    started_at: float
    renewed_at: float
    # Set when the worker ends the attempt itself (timeout, hard cancel): why, as
    # (http status, error_type).
    failure: tuple[int, str] | None = None
    timer: asyncio.TimerHandle | None = None
    stopping: bool = False  # asked to stop (cancelled, or its lease was lost)

    @property
    def request_id(self) -> str:
        return self.assignment.request_id


def worker_failure(request_id: str, status: int, detail: str, error_type: str,
                   retry: bool) -> Result:
    """An attempt's end that the worker reports itself (its runner could not answer)."""
    body = json.dumps({"detail": detail, "error_type": error_type}).encode()
    return Result(request_id, status, body, {"x-fal-error-type": error_type,
                                             "x-fal-needs-retry": "1" if retry else "0"})


_FAILURES = {
    "request_timeout": (504, "The request exceeded its request_timeout", True),
    "client_cancelled": (499, "Request cancelled", False),
    "runner_disconnected": (503, "The runner stopped while serving the request", True),
}


class Worker:
    def __init__(self, link: WorkLink, apps: list[ServedApp], *, runner_env: dict[str, str],
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, kind: str = "worker",
                 secret_box: SecretBox | None = None, gpus: list[str] | None = None,
                 environments: AppEnvironments | None = None):
        # "local:" workers belong to the gateway process that runs them (see Dispatcher).
        self.id = f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.link = link
        self.runner_env = runner_env
        # Opens the app secrets its runners get; None: they cannot be opened here.
        self.secret_box = secret_box
        self.lease_seconds = lease_seconds
        self.gpus = GpuSet(gpus)  # gpus None: not managed (runners see what this process sees)
        # Builds the apps' own Python environments; None: every runner runs in this one's.
        self.environments = environments
        self.templates = Templates()  # a runner template per Python environment
        self.pools = {app.ref: AppPool(app, self) for app in apps}
        self.attempts: dict[str, Attempt] = {}  # by attempt id
        self._held_changed = asyncio.Event()
        self._attempt_ended = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start()
        self._spawn(self._keep_leases())

    # Attempts
    def start_attempt(self, pool: AppPool, runner: RunnerHandle, assignment: Assignment) -> None:
        now = time.monotonic()
        attempt = Attempt(assignment, runner, pool, time.time(), now)
        self.attempts[assignment.attempt_id] = attempt
        runner.in_flight[assignment.request_id] = attempt
        runner.send(assignment.run_message())
        attempt.timer = asyncio.get_running_loop().call_later(
            pool.config.request_timeout, self._timed_out, attempt)
        self._held_changed.set()

    def _timed_out(self, attempt: Attempt) -> None:
        if attempt.request_id in attempt.runner.in_flight:
            log.warning("request %s exceeded its request_timeout; stopping runner %s (its "
                        "other requests are retried)", attempt.request_id, attempt.runner.id)
            attempt.failure = (504, "request_timeout")
            attempt.runner.kill()

    def on_runner_message(self, runner: RunnerHandle, message: RequestMessage) -> None:
        attempt = runner.in_flight.get(message.id)
        if attempt is None:
            return
        if isinstance(message, Result):
            runner.in_flight.pop(message.id)
            runner.hints = message.hints or runner.hints
            if message.status == 503 and message.headers.get("x-fal-needs-retry") != "0":
                # The runner says it is unhealthy: replace it before anything more is
                # placed on it (the retry of this request included).
                runner.kill()
            self._end(attempt, message)
            attempt.pool.watch_idle(runner)
        else:
            self.link.report(attempt.assignment.attempt_id, message)

    def on_runner_exit(self, runner: RunnerHandle) -> None:
        for attempt in list(runner.in_flight.values()):
            _, error_type = attempt.failure or (503, "runner_disconnected")
            status, detail, retry = _FAILURES[error_type]
            self._end(attempt, worker_failure(attempt.request_id, status, detail, error_type,
                                              retry))
        runner.in_flight.clear()

    def _end(self, attempt: Attempt, result: Result) -> None:
        self._release(attempt)
        self._spawn(self._report_end(attempt, result), "report")

    def _release(self, attempt: Attempt) -> None:
        if attempt.timer is not None:
            attempt.timer.cancel()
        self.attempts.pop(attempt.assignment.attempt_id, None)
        attempt.pool.room_changed()
        self._attempt_ended.set()

    async def _report_end(self, attempt: Attempt, result: Result) -> None:
        try:
            recorded = await self.link.finish(attempt.assignment.attempt_id, result)
        except Exception:
            log.exception("request %s: could not report its result; its lease will lapse "
                          "and it will be retried", attempt.request_id)
            return
        if not recorded:
            log.warning("request %s: result of attempt %s refused (the attempt had lost its "
                        "lease)", attempt.request_id, attempt.assignment.attempt_id)

    def _stop_attempt(self, attempt: Attempt, why: tuple[int, str]) -> None:
        """Ask the runner to stop the request; kill the runner if it has not stopped it
        within the app's ``cancel_grace_period``."""
        if attempt.stopping:
            return
        attempt.stopping = True
        attempt.runner.send(Cancel(attempt.request_id))
        grace = attempt.pool.config.cancel_grace_period
        asyncio.get_running_loop().call_later(grace, self._hard_stop, attempt, why)

    def _hard_stop(self, attempt: Attempt, why: tuple[int, str]) -> None:
        if attempt.runner.in_flight.get(attempt.request_id) is attempt:
            log.warning("request %s ignored its cancellation; stopping runner %s (its other "
                        "requests are retried)", attempt.request_id, attempt.runner.id)
            attempt.failure = why
            attempt.runner.kill()

    # Leases
    async def _keep_leases(self) -> None:
        """Renew the leases of running attempts (each about every sixth of a lease), and
        stop those the platform says are cancelled or no longer this worker's. Each renewal
        waits on the gateway for a cancel until the next one is due; attempts claimed
        through that gateway meanwhile are watched there without a new call."""
        interval = self.lease_seconds / 6
        while True:
            self._held_changed.clear()
            held = list(self.attempts.values())
            if not held:
                await self._held_changed.wait()
                continue
            now = time.monotonic()
            due = [a for a in held if now - a.renewed_at >= interval]
            watch = [a.request_id for a in held if not a.stopping]
            try:
                report = await asyncio.wait_for(self.link.renew(
                    self.id, [a.assignment.attempt_id for a in due], watch,
                    interval if watch else 0.0), interval * 3)
            except Exception:
                log.exception("renewing leases failed; trying again")
                await asyncio.sleep(1.0)
                continue
            for attempt in due:
                attempt.renewed_at = now
            self._act_on(report.cancelled, (499, "client_cancelled"))
            self._act_on(report.lost, (503, "lease_lost"))
            if not watch:  # all held attempts are stopping: nothing to wait on there
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._held_changed.wait(), interval)

    def _act_on(self, ids: list[str], why: tuple[int, str]) -> None:
        for attempt in list(self.attempts.values()):
            if attempt.assignment.attempt_id in ids or attempt.request_id in ids:
                if why[1] == "lease_lost":
                    log.warning("request %s: lease lost; stopping it", attempt.request_id)
                self._stop_attempt(attempt, why if why[1] != "lease_lost"
                                   else (503, "runner_disconnected"))

    def runtime_modules(self) -> set[str]:
        """What its apps' runners import that is worth importing once, in a template."""
        return {name for pool in self.pools.values() for name in pool.config.runtime_modules}

    # Apps deployed while it runs (worker/deployments.py)
    def add_app(self, app: ServedApp) -> None:
        pool = AppPool(app, self)
        self.pools[app.ref] = pool
        pool.start()

    def retire_app(self, ref: str, failure: RunnerSetupFailed | None = None) -> None:
        """Serve the app ``ref`` names no more: it claims nothing more from now on, its
        running requests finish on their runners, then those stop. With ``failure`` (the
        app was deleted), its waiting requests end with that answer."""
        pool = self.pools.pop(ref, None)
        if pool is not None:
            pool.pause()
            self._spawn(self._retire(pool, failure), name="retire")

    async def _retire(self, pool: AppPool, failure: RunnerSetupFailed | None) -> None:
        if failure is not None:
            await self.fail_waiting(pool, failure)
        await pool.retire()

    # Setup failures
    async def fail_waiting(self, pool: AppPool, failure: RunnerSetupFailed) -> None:
        """No runner can start: fail the app's waiting requests with the reason (the app's
        own answer when it gave one)."""
        if failure.answer is not None:
            status, body = failure.answer
            headers = {"x-fal-needs-retry": "0"}
        else:
            status = 503
            body = json.dumps({"detail": f"No runner could be started for "
                                         f"{pool.app.app_id}: {failure}",
                               "error_type": "runner_scheduling_failure"}).encode()
            headers = {"x-fal-error-type": "runner_scheduling_failure",
                       "x-fal-needs-retry": "0"}
        while True:
            reply = await self.link.claim(self.id, pool.endpoint_ids, 64, 0.0)
            if not reply.assignments:
                return
            for assignment in reply.assignments:
                await self.link.finish(assignment.attempt_id, Result(
                    assignment.request_id, status, body, headers), started=False)

    # Shutdown
    async def drain(self, grace_seconds: float) -> int:
        """Claim nothing more, let running attempts finish for up to ``grace_seconds``,
        then hand back what still runs. How many were handed back."""
        for pool in self.pools.values():
            pool.pause()
        deadline = time.monotonic() + grace_seconds
        while self.attempts and (left := deadline - time.monotonic()) > 0:
            self._attempt_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempt_ended.wait(), left)
        running = list(self.attempts.values())
        for attempt in running:
            attempt.runner.in_flight.pop(attempt.request_id, None)
            self._release(attempt)
            attempt.runner.kill()
        await asyncio.gather(*(self.link.hand_back(a.assignment.attempt_id, a.request_id, True)
                               for a in running), return_exceptions=True)
        # Results being reported are part of finishing.
        reporting = [task for task in self._tasks if task.get_name() == "report"]
        if reporting:
            await asyncio.wait(reporting, timeout=max(1.0, deadline - time.monotonic()))
        return len(running)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(pool.shutdown() for pool in self.pools.values()))
        await self.templates.close()

    def running(self) -> int:
        return len(self.attempts)

    def describe_runners(self) -> list[dict[str, Any]]:
        return [runner.describe() for pool in self.pools.values()
                for runner in pool.runners.values()]

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
