"""One app's runners on a worker: claiming its work, placement, scaling, scale-to-zero."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
from typing import TYPE_CHECKING

from openfal.app.registry import ServedApp
from openfal.secrets import SecretsUnavailable, runner_secrets
from openfal.worker.environments import EnvironmentBuildFailed, RunnerEnvironment
from openfal.worker.link import Assignment, ClaimReply
from openfal.worker.runners import RunnerHandle, RunnerSetupFailed

if TYPE_CHECKING:
    from openfal.worker.worker import Worker

log = logging.getLogger(__name__)

# After this many setups fail in a row, the app's waiting requests fail instead of waiting
# for a runner that may never come.
SETUP_FAILURE_LIMIT = 3
CLAIM_WAIT_SECONDS = 10.0  # a claim with nothing to give waits this long for work
ROOM_POLL_SECONDS = 1.0  # with work waiting and no free slot, how often demand is re-read


class AppPool:
    def __init__(self, app: ServedApp, worker: Worker):
        self.app = app
        self.config = app.cls
        self.worker = worker
        self.endpoint_ids = app.endpoint_ids()
        self.runners: dict[str, RunnerHandle] = {}
        self.demand = 0  # requests of this app waiting, as the last claim saw
        self.setup_failures = 0
        self.paused = False  # draining: nothing more is claimed or started
        self._room = asyncio.Event()
        self._spawn_blocked_until = 0.0
        self._scale_scheduled = False
        self._refusing = False  # failing the waiting requests of an app too big for the GPUs
        self._tasks: set[asyncio.Task] = set()
        self._claiming: asyncio.Task | None = None

    def start(self) -> None:
        self._claiming = asyncio.get_running_loop().create_task(self._claim_loop())
        self._track(self._claiming)
        self._scale()

    # Claiming
    def free_slots(self) -> int:
        return sum(r.max_multiplexing - len(r.in_flight) for r in self.runners.values()
                   if r.has_capacity)

    def busy(self) -> int:
        return sum(len(r.in_flight) for r in self.runners.values())

    def room_changed(self) -> None:
        self._room.set()

    async def _claim_loop(self) -> None:
        """Claim work while the pool runs; an unexpected error is logged and the loop goes
        on (a pool that stopped claiming would leave its app's requests waiting)."""
        while not self.paused:
            try:
                await self._claim_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: claiming work failed; trying again", self.app.app_id)
                await asyncio.sleep(ROOM_POLL_SECONDS)

    async def _claim_once(self) -> None:
        self._room.clear()  # room made from now on (during the claim too) ends the wait below
        free = self.free_slots()
        starved = free == 0 and self.demand > 0
        reply = await self._claim(free, 0.0 if starved else CLAIM_WAIT_SECONDS)
        if reply is None:
            return  # room was made while it waited with none: claim again, with room
        if self.paused:
            for assignment in reply.assignments:
                await self.worker.link.hand_back(assignment.attempt_id,
                                                 assignment.request_id, False)
            return
        self.demand = reply.waiting
        placed = [self._place(assignment) for assignment in reply.assignments]
        self._scale()
        if ((self.free_slots() == 0 and self.demand > 0) or not all(placed)
                or (not reply.assignments and reply.waiting > 0)):
            # Work waits and there is no room here (runners busy or starting), an attempt
            # went back (it waits for a runner, or for an older attempt of its request to
            # end), or the waiting requests' keys are at their limits: wait for a slot,
            # then look again. (No room and nothing waiting: the next claim, of nothing,
            # waits for work to arrive, to scale out for it.)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), ROOM_POLL_SECONDS)

    async def _claim(self, limit: int, wait: float) -> ClaimReply | None:
        """The link's claim; None if it asked for no work and a slot came free while it
        waited (such a claim is answered with no assignments, so it can be dropped: as it
        long-polls for new work, direct runs meanwhile would find no claim to take them)."""
        if limit > 0 or wait <= 0:
            # Awaited in this task, not a new one: the claim is waiting on the gateway
            # before anything else runs (a direct run arriving meanwhile would miss it).
            return await self.worker.link.claim(self.worker.id, self.endpoint_ids, limit, wait,
                                                   self.app.revision)
        claim = asyncio.ensure_future(self.worker.link.claim(
            self.worker.id, self.endpoint_ids, limit, wait, self.app.revision))
        room = asyncio.ensure_future(self._room.wait())
        try:
            await asyncio.wait({claim, room}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            claim.cancel()
            raise
        finally:
            room.cancel()
        if claim.done():
            return claim.result()
        claim.cancel()
        await asyncio.gather(claim, return_exceptions=True)
        return None

    def _place(self, assignment: Assignment) -> bool:
        """Start the attempt on a runner; False if it went back to the queue instead: its
        runner went away since the claim (and one is started), or an older attempt of the
        same request still runs here (its lease was lost while this worker was cut off or
        frozen). Runners know requests by id: a second run of one would take the first's
        result and cancel."""
        runner = self._pick_runner(assignment.runner_hint)
        if runner is None or any(assignment.request_id in r.in_flight
                                 for r in self.runners.values()):
            self._track(asyncio.get_running_loop().create_task(self.worker.link.hand_back(
                assignment.attempt_id, assignment.request_id, False)))
            if runner is None:
                self.demand += 1
            return False
        self.worker.start_attempt(self, runner, assignment)
        return True

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

    def _missing_runners(self) -> int:
        needed = math.ceil((self.busy() + self.demand) / self.config.max_multiplexing)
        target = min(max(self.config.min_concurrency, needed), self.config.max_concurrency)
        return target - len(self._live_runners())

    def _scale(self) -> None:
        if self.paused or self._missing_runners() <= 0:
            return
        if not self.worker.gpus.fits(self.gpus_needed):
            self._refuse_for_gpus()
            return
        delay = self._spawn_blocked_until - time.monotonic()
        if delay > 0:
            if not self._scale_scheduled:
                self._scale_scheduled = True
                asyncio.get_running_loop().call_later(delay, self._scale_after_backoff)
            return
        # Counted again at each runner: taking devices may have started one (got_gpus).
        while self._missing_runners() > 0:
            devices = self.worker.gpus.take(self.gpus_needed)
            if devices is None:  # its work waits in the queue until devices come free
                self.worker.gpus.wait(self)
                return
            self._spawn(devices)

    def _scale_after_backoff(self) -> None:
        self._scale_scheduled = False
        self._scale()

    # GPUs (worker/gpus.py)
    @functools.cached_property
    def gpus_needed(self) -> int:
        """By each of its runners."""
        return self.config.gpu_count()

    def wants_gpus(self) -> bool:
        return not self.paused and self._missing_runners() > 0

    def got_gpus(self, devices: list[str]) -> None:
        self._spawn(devices)
        self._scale()

    def _spawn(self, gpus: list[str]) -> None:
        runner = RunnerHandle(self.app.app_id, self.app.ref, self.config.max_multiplexing,
                              self.worker.runner_env | self.worker.gpus.environment(gpus),
                              gpus)
        self.runners[runner.id] = runner
        self._track(asyncio.get_running_loop().create_task(self._run(runner)))

    async def _run(self, runner: RunnerHandle) -> None:
        try:
            failure = await self._start(runner)
            if failure is None:
                await self._serve(runner)
        finally:
            # However it ended (shutting down too), its GPUs are free once it is gone.
            self.runners.pop(runner.id, None)
            await runner.end()
            self.worker.gpus.give_back(runner.gpus)
        if failure is not None:
            if not self.paused:
                await self._setup_failed(failure)
            return
        # Whatever ended it (short of shutting down), its requests end or are retried.
        self.worker.on_runner_exit(runner)
        self.room_changed()
        self._scale()

    async def _start(self, runner: RunnerHandle) -> RunnerSetupFailed | None:
        """Start the runner and wait for its setup; why it failed, if it did."""
        try:
            # A secret cannot override the worker's own settings (where files go, ...).
            runner.env = {**await self._secrets(), **runner.env}
            environment = await self._environment()
            variables = environment.variables if environment else {}
            python = environment.python if environment else None
            templates = self.worker.templates
            await runner.start(self.config.startup_timeout, environment,
                               templates.for_environment(variables, python))
            templates.prepare(variables, python, self.worker.runtime_modules(),
                              runner.modules)
        except RunnerSetupFailed as exc:
            return exc
        except Exception as exc:
            return RunnerSetupFailed(f"could not start a runner: {exc!r}")
        return None

    async def _serve(self, runner: RunnerHandle) -> None:
        self.setup_failures = 0
        self.watch_idle(runner)
        self.room_changed()
        try:
            await runner.serve(self.worker.on_runner_message)
        except Exception:
            log.exception("%s: lost runner %s", self.app.app_id, runner.id)

    async def _environment(self) -> RunnerEnvironment | None:
        """The app's own Python environment (its ``requirements``), built if it is not yet.
        One that cannot be built fails the app's waiting requests at once: every runner
        would fail alike."""
        if self.worker.environments is None or not self.config.requirements:
            return None
        try:
            return await self.worker.environments.prepare(self.config.requirements)
        except EnvironmentBuildFailed as exc:
            detail = f"Could not install the requirements of {self.app.app_id}: {exc}"
            body = json.dumps({"detail": detail, "error_type": "runner_setup_failed"})
            raise RunnerSetupFailed(detail, answer=(500, body.encode())) from None

    async def _secrets(self) -> dict[str, str]:
        """The app's secrets, read as each runner starts (a secret set later reaches the
        runners started later)."""
        sealed = await self.worker.link.secrets(self.config.secrets)
        try:
            return runner_secrets(sealed, self.config.secrets, self.worker.secret_box)
        except SecretsUnavailable as exc:
            raise RunnerSetupFailed(str(exc)) from None

    async def _setup_failed(self, failure: RunnerSetupFailed) -> None:
        self.setup_failures += 1
        log.error("%s: runner setup failed (%d in a row): %s", self.app.app_id,
                  self.setup_failures, failure)
        if failure.answer is not None or self.setup_failures >= SETUP_FAILURE_LIMIT:
            self.setup_failures = 0
            await self.worker.fail_waiting(self, failure)
        else:
            backoff = min(0.5 * 2 ** (self.setup_failures - 1), 30.0)
            self._spawn_blocked_until = time.monotonic() + backoff
        self._scale()

    def _refuse_for_gpus(self) -> None:
        """A runner of this app needs more GPUs than this worker has: its waiting requests
        fail, as after a setup failure, rather than wait for devices that never come."""
        if self._refusing:
            return
        self._refusing = True
        failure = RunnerSetupFailed(self.worker.gpus.too_few(self.gpus_needed))
        self._track(asyncio.get_running_loop().create_task(self._refuse(failure)))

    async def _refuse(self, failure: RunnerSetupFailed) -> None:
        log.error("%s: %s", self.app.app_id, failure)
        try:
            await self.worker.fail_waiting(self, failure)
        finally:
            self._refusing = False

    def watch_idle(self, runner: RunnerHandle) -> None:
        """Stop the runner if it is still idle ``keep_alive`` seconds from now (one timer
        per runner, moved at each idle moment)."""
        if runner.in_flight:
            return
        if runner.idle_timer is not None:
            runner.idle_timer.cancel()
        runner.idle_timer = asyncio.get_running_loop().call_later(
            self.config.keep_alive, self._reap, runner)

    def _reap(self, runner: RunnerHandle) -> None:
        runner.idle_timer = None
        if (runner.id not in self.runners or runner.in_flight or runner.draining
                or len(self._live_runners()) <= self.config.min_concurrency):
            return
        log.info("%s: runner %s idle for %gs, stopping", self.app.app_id, runner.id,
                 self.config.keep_alive)
        runner.stop()

    def _track(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pause(self) -> None:
        """Claim and start nothing more (what a claim under way brings is handed back)."""
        self.paused = True
        self.room_changed()

    async def retire(self) -> None:
        """After :meth:`pause`: each runner finishes what it runs, then stops."""
        for runner in list(self.runners.values()):
            if runner.ready:
                runner.stop()
            else:
                runner.kill()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        self.paused = True
        for runner in list(self.runners.values()):
            runner.kill()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
