"""One app's runners and waiting requests: placement, scaling and scale-to-zero."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from openfal.app.registry import ServedApp
from openfal.dispatcher.jobs import Job, Priority
from openfal.dispatcher.runners import RunnerHandle, SetupFailed

log = logging.getLogger(__name__)

# After this many setups fail in a row, the app's waiting requests fail instead of waiting
# for a runner that may never come.
SETUP_FAILURE_LIMIT = 3


class AppPool:
    def __init__(self, app: ServedApp, *, runner_env: dict[str, str],
                 may_start: Callable[[Job], bool],
                 start_attempt: Callable[[Job, RunnerHandle], None],
                 on_message: Callable[[RunnerHandle, dict[str, Any]], None],
                 on_exit: Callable[[RunnerHandle], None],
                 on_setup_failure: Callable[[AppPool, SetupFailed], None]):
        self.app = app
        self.config = app.cls
        self.queues: dict[Priority, deque[Job]] = {p: deque() for p in Priority}
        self.runners: dict[str, RunnerHandle] = {}
        self.setup_failures = 0
        self.runner_env = runner_env
        self._may_start = may_start
        self._start_attempt = start_attempt
        self._on_message = on_message
        self._on_exit = on_exit
        self._on_setup_failure = on_setup_failure
        self._spawn_blocked_until = 0.0
        self._scale_scheduled = False
        self.paused = False  # draining for shutdown: nothing more is placed or started
        self._tasks: set[asyncio.Task] = set()

    # Waiting requests
    def enqueue(self, job: Job, *, front: bool = False) -> None:
        queue = self.queues[job.priority]
        queue.appendleft(job) if front else queue.append(job)
        self.pump()

    def remove(self, job: Job) -> bool:
        try:
            self.queues[job.priority].remove(job)
        except ValueError:
            return False
        return True

    def waiting(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def queued_requests(self) -> int:
        """Requests that came through the queue and have not started."""
        return len(self.queues[Priority.NORMAL]) + len(self.queues[Priority.LOW])

    def position(self, job: Job) -> int:
        ahead = 0
        for priority, queue in self.queues.items():
            if priority < job.priority:
                ahead += len(queue)
            elif priority == job.priority:
                for i, other in enumerate(queue):
                    if other is job:
                        return ahead + i
        return ahead

    def take_waiting(self, *priorities: Priority) -> list[Job]:
        """Remove and return the waiting requests of these priorities (default: all)."""
        queues = [self.queues[p] for p in priorities or Priority]
        jobs = [job for queue in queues for job in queue]
        for queue in queues:
            queue.clear()
        return jobs

    # Placement
    def pump(self) -> None:
        """Hand waiting requests to runners with room, then scale to the demand."""
        if self.paused:
            return
        while (job := self._next_job()) is not None:
            runner = self._pick_runner(job.runner_hint)
            if runner is None:
                break
            self.queues[job.priority].remove(job)
            self._start_attempt(job, runner)
        self._scale()

    def _next_job(self) -> Job | None:
        """The first waiting request in priority order that may start now (its key may be
        at its concurrency limit; then later requests of other keys go first)."""
        for queue in self.queues.values():
            for job in queue:
                if self._may_start(job):
                    return job
        return None

    def _pick_runner(self, hint: str | None) -> RunnerHandle | None:
        best: RunnerHandle | None = None
        for runner in self.runners.values():
            if not runner.has_capacity:
                continue
            if hint is not None and hint in runner.hints:
                return runner
            if best is None or len(runner.in_flight) < len(best.in_flight):
                best = runner
        return best

    # Scaling
    def _live_runners(self) -> list[RunnerHandle]:
        return [r for r in self.runners.values() if not r.draining]

    def _scale(self) -> None:
        if self.paused:
            return
        busy = sum(len(r.in_flight) for r in self._live_runners())
        needed = math.ceil((busy + self.waiting()) / self.config.max_multiplexing)
        target = min(max(self.config.min_concurrency, needed), self.config.max_concurrency)
        missing = target - len(self._live_runners())
        if missing <= 0:
            return
        delay = self._spawn_blocked_until - time.monotonic()
        if delay > 0:
            if not self._scale_scheduled:
                self._scale_scheduled = True
                self._later(delay, self._scale_after_backoff)
            return
        for _ in range(missing):
            self._spawn()

    def _scale_after_backoff(self) -> None:
        self._scale_scheduled = False
        self._scale()

    def _spawn(self) -> None:
        runner = RunnerHandle(self.app.app_id, self.app.ref, self.config.max_multiplexing,
                              self.runner_env)
        self.runners[runner.id] = runner
        self._track(asyncio.create_task(self._run(runner)))

    async def _run(self, runner: RunnerHandle) -> None:
        try:
            await runner.start(self.config.startup_timeout)
        except SetupFailed as exc:
            self.runners.pop(runner.id, None)
            self._setup_failed(exc)
            return
        except Exception as exc:
            self.runners.pop(runner.id, None)
            runner.kill()
            self._setup_failed(SetupFailed(f"could not start a runner: {exc!r}"))
            return
        self.setup_failures = 0
        self.watch_idle(runner)
        self.pump()
        try:
            await runner.serve(self._on_message)
        except Exception:
            log.exception("%s: lost runner %s", self.app.app_id, runner.id)
        # Whatever ended it (short of shutting down), its requests end or are retried.
        runner.kill()
        self.runners.pop(runner.id, None)
        self._on_exit(runner)
        self.pump()

    def _setup_failed(self, failure: SetupFailed) -> None:
        self.setup_failures += 1
        log.error("%s: runner setup failed (%d in a row): %s", self.app.app_id,
                  self.setup_failures, failure)
        if failure.answer is not None or self.setup_failures >= SETUP_FAILURE_LIMIT:
            self.setup_failures = 0
            self._on_setup_failure(self, failure)
        else:
            backoff = min(0.5 * 2 ** (self.setup_failures - 1), 30.0)
            self._spawn_blocked_until = time.monotonic() + backoff
        self._scale()

    def watch_idle(self, runner: RunnerHandle) -> None:
        """Stop the runner if it is still idle ``keep_alive`` seconds from now."""
        if runner.in_flight:
            return
        runner.idle_since = since = time.monotonic()
        self._later(self.config.keep_alive, lambda: self._reap(runner, since))

    def _reap(self, runner: RunnerHandle, idle_since: float) -> None:
        if (runner.id not in self.runners or runner.in_flight or runner.draining
                or runner.idle_since != idle_since
                or len(self._live_runners()) <= self.config.min_concurrency):
            return
        log.info("%s: runner %s idle for %gs, stopping", self.app.app_id, runner.id,
                 self.config.keep_alive)
        runner.stop()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_later(delay, fn)

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        for runner in list(self.runners.values()):
            runner.kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
