"""The dispatcher: every live request's path from waiting, to a runner, to an outcome.

It owns the in-memory view of active requests (one :class:`Job` each) and keeps the store
in step: a queued request is committed before its id is returned, every attempt is
recorded, and an outcome is committed before anyone is told about it. On start it picks up
what a previous process left unfinished: queued requests wait again, in-progress ones are
retried (their runner died with that process).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from openfal.app.registry import Registry, ServedApp
from openfal.dispatcher.jobs import Attempt, Job, Priority
from openfal.dispatcher.pool import AppPool
from openfal.dispatcher.runners import RunnerHandle, SetupFailed
from openfal.store.base import LogEntry, Mode, Outcome, RequestRecord, Status, Store
from openfal.webhooks.targets import webhook_target

log = logging.getLogger(__name__)

# Just-finished queued requests kept in memory (see Dispatcher._remember).
RECENT_LIMIT = 4096
RECENT_MAX_BYTES = 256 * 1024

# Runner answers that mean "this runner is unwell, try another": the hosted platform's rule.
_RETRY_STATUSES = {503, 504}


def failure(status: int, detail: str, error_type: str,
            headers: dict[str, str] | None = None) -> Outcome:
    body = json.dumps({"detail": detail, "error_type": error_type}).encode()
    return Outcome(status=status, body=body, error=detail, error_type=error_type,
                   headers={"x-fal-error-type": error_type, **(headers or {})})


def cancelled() -> Outcome:
    return failure(499, "Request cancelled", "client_cancelled")


class CancelResult(enum.StrEnum):
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    """The server is draining: it takes no new work (callers may retry elsewhere/later)."""


class KeyAtLimit(Exception):
    """A direct run's key is at a bound: its running requests (the key's concurrency
    limit) or its direct runs waiting for a runner. Direct runs do not wait for a key's
    slot; the message says which bound (the clients retry a 429)."""


class Dispatcher:
    def __init__(self, store: Store, registry: Registry, *, retention_seconds: float,
                 runner_env: dict[str, str] | None = None,
                 max_waiting_direct_per_key: int | None = None):
        self.store = store
        self.max_waiting_direct_per_key = max_waiting_direct_per_key
        self.runner_env = runner_env or {}
        self.registry = registry
        self.retention_seconds = retention_seconds
        self.jobs: dict[str, Job] = {}
        self.pools: dict[str, AppPool] = {}
        # Running attempts per API key, for per-key concurrency limits.
        self.running_by_key: Counter[str] = Counter()
        # Direct runs waiting for a runner per API key (bounded: abandoned callers are
        # cancelled, but a flood of live ones must not starve everyone else).
        self.waiting_direct_by_key: Counter[str] = Counter()
        self.accepting = True
        self.drained = False  # set once a shutdown drain is over: status streams end
        self._attempt_ended = asyncio.Event()
        self.recent: OrderedDict[str, tuple[RequestRecord, list[LogEntry]]] = OrderedDict()
        self._background: set[asyncio.Task] = set()
        # Called once a finished request's webhook is committed (the delivery worker's wake).
        self.on_webhook_queued: Callable[[], None] = lambda: None

    # Lifecycle
    async def start(self) -> None:
        for app in self.registry.apps.values():
            self.pools[app.ref] = AppPool(
                app, runner_env=self.runner_env, may_start=self._key_has_room,
                start_attempt=self._start_attempt,
                on_message=self._on_message, on_exit=self._on_runner_exit,
                on_setup_failure=self._on_setup_failure)
        await self._recover()
        for pool in self.pools.values():
            pool.pump()
        self._spawn(self._purge_loop())

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.gather(*(pool.shutdown() for pool in self.pools.values()))

    async def _recover(self) -> None:
        now = time.time()
        for record in await self.store.unfinished():
            found = self.registry.resolve(record.endpoint_id)
            job = Job.from_record(record, found[0].ref if found else "")
            if found is None:
                self._finish(job, failure(
                    404, f"Endpoint {record.endpoint_id} is no longer served",
                    "endpoint_not_found"))
                continue
            if record.status is Status.IN_PROGRESS:
                # Its runner went down with the previous server process.
                self.store.end_attempt(job.id, job.attempts, now, "lost", "runner_disconnected")
                if not job.may_retry():
                    self._finish(job, failure(
                        503, "The runner stopped while serving the request",
                        "runner_disconnected"))
                    continue
                self.store.requeue(job.id)
            job.logs = await self.store.get_logs(job.id)  # status shows them as before
            self.jobs[job.id] = job
            self._arm_start_deadline(job)
            if not job.finished:
                self.pools[job.app_ref].queues[job.priority].append(job)
        log.info("recovered %d unfinished requests", len(self.jobs))

    # Entry points
    def new_job(self, app: ServedApp, path: str, payload: bytes, headers: dict[str, str],
                mode: Mode, priority: Priority, options: dict[str, Any],
                key_id: str | None = None) -> Job:
        return Job(id=str(uuid.uuid4()), app_id=app.app_id, app_ref=app.ref,
                   endpoint_id=app.endpoint_id(path),
                   path=path, mode=mode, payload=payload, headers=headers,
                   priority=priority, created_at=time.time(), options=options, key_id=key_id)

    async def submit(self, job: Job, max_queue_length: int | None = None) -> None:
        """Accept a queued request: returns once it is committed to the store."""
        self._check_accepting()
        pool = self.pools[job.app_ref]
        if max_queue_length is not None and pool.queued_requests() >= max_queue_length:
            raise QueueFull(pool.queued_requests())
        await self.store.add_request(job.to_record())
        self.jobs[job.id] = job
        self._arm_start_deadline(job)
        pool.enqueue(job)

    def start_direct(self, job: Job) -> asyncio.Future[Outcome]:
        """Place a request to run now, without the queue's durability or retries; the
        future resolves to its outcome. Whoever stops waiting for it calls ``cancel``."""
        self._check_accepting()
        if job.key_id is not None:
            limit = job.key_limit
            if limit is not None and self.running_for(job.key_id) >= limit:
                raise KeyAtLimit(f"This key already has {limit} requests running")
            bound = self.max_waiting_direct_per_key
            if bound is not None and self.waiting_direct_by_key[job.key_id] >= bound:
                raise KeyAtLimit(f"This key already has {bound} direct requests waiting "
                                 "for a runner")
            self.waiting_direct_by_key[job.key_id] += 1
            job.counted_waiting = True
        self.jobs[job.id] = job
        self._arm_start_deadline(job)
        self.pools[job.app_ref].enqueue(job)
        return job.done

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown()

    def _stop_waiting(self, job: Job) -> None:
        if job.counted_waiting:
            job.counted_waiting = False
            self.waiting_direct_by_key[job.key_id] -= 1
            if not self.waiting_direct_by_key[job.key_id]:
                del self.waiting_direct_by_key[job.key_id]

    def cancel(self, request_id: str) -> CancelResult:
        job = self.jobs.get(request_id)
        if job is None:
            return CancelResult.NOT_FOUND
        if job.finished:
            return CancelResult.ALREADY_COMPLETED
        job.cancel_requested = True
        if self.pools[job.app_ref].remove(job):
            self._finish(job, cancelled())
        elif job.attempt is not None:
            attempt = job.attempt
            attempt.runner.send({"t": "cancel", "id": job.id})
            grace = self.pools[job.app_ref].config.cancel_grace_period
            asyncio.get_running_loop().call_later(grace, self._hard_cancel, attempt)
        return CancelResult.CANCELLATION_REQUESTED

    def _hard_cancel(self, attempt: Attempt) -> None:
        if attempt.job.attempt is attempt and attempt.job.id in attempt.runner.in_flight:
            log.warning("request %s ignored its cancellation; stopping runner %s",
                        attempt.job.id, attempt.runner.id)
            attempt.failure = (499, "client_cancelled")
            attempt.runner.kill()

    # Per-key concurrency: only running requests count; waiting ones wait.
    def running_for(self, key_id: str | None) -> int:
        return self.running_by_key[key_id] if key_id is not None else 0

    def _key_has_room(self, job: Job) -> bool:
        limit = job.key_limit
        return limit is None or self.running_for(job.key_id) < limit

    def _key_slot_freed(self, job: Job) -> None:
        if job.key_id is None:
            return
        was_full = job.key_limit is not None and self.running_for(job.key_id) >= job.key_limit
        self.running_by_key[job.key_id] -= 1
        if was_full:
            # A request of this key may have been held back in any app's queue.
            for pool in self.pools.values():
                pool.pump()

    # Attempts
    def _start_attempt(self, job: Job, runner: RunnerHandle) -> None:
        self._stop_waiting(job)
        job.attempts += 1
        if job.key_id is not None:
            self.running_by_key[job.key_id] += 1
        now = time.time()
        if job.started_at is None:
            job.started_at = now
        attempt = Attempt(job=job, number=job.attempts, attempt_id=str(uuid.uuid4()),
                          runner=runner, started_at=now)
        job.attempt = attempt
        job.status = Status.IN_PROGRESS
        if job.deadline_timer is not None:
            job.deadline_timer.cancel()
        runner.in_flight[job.id] = attempt
        runner.send({"t": "run", "id": job.id, "path": job.path, "endpoint_id": job.endpoint_id,
                     "body": job.payload,
                     "headers": job.headers, "stream": job.partials is not None,
                     "encoding": job.encoding, "state": job.options.get("saved_state")})
        timeout = self.pools[job.app_ref].config.request_timeout
        attempt.timer = asyncio.get_running_loop().call_later(
            timeout, self._attempt_timed_out, attempt)
        if job.mode is Mode.QUEUE:
            self.store.start_attempt(job.id, attempt.number, attempt.attempt_id, runner.id, now)
        job.notify()

    def _attempt_timed_out(self, attempt: Attempt) -> None:
        if attempt.job.id in attempt.runner.in_flight:
            log.warning("request %s exceeded its request_timeout; stopping runner %s",
                        attempt.job.id, attempt.runner.id)
            attempt.failure = (504, "request_timeout")
            attempt.runner.kill()

    def _on_message(self, runner: RunnerHandle, message: dict[str, Any]) -> None:
        kind = message["t"]
        attempt = runner.in_flight.get(message.get("id", ""))
        if attempt is None:
            return
        job = attempt.job
        if kind == "result":
            runner.in_flight.pop(job.id)
            runner.hints = message.get("hints") or runner.hints
            status, body = message["status"], message["body"]
            headers = message.get("headers") or {}
            retry = _needs_retry(status, headers)
            outcome = Outcome(status=status, body=body, headers=headers,
                              inference_time=time.time() - attempt.started_at)
            if status == 503 and retry:
                # The runner says it is unhealthy: replace it (before anything is placed
                # on it again, the retry of this request included).
                runner.kill()
            self._end_attempt(attempt, outcome, retry)
            pool = self.pools[job.app_ref]
            pool.watch_idle(runner)
            pool.pump()
        elif kind == "log":
            entry = LogEntry(message["message"], message.get("level", "INFO"),
                             message.get("source", "USER"), time.time())
            job.logs.append(entry)
            self.store.add_logs(job.id, [entry])
            job.notify()
        elif kind == "partial":
            job.latest_partial = message["body"]
            if job.partials is not None:
                job.partials.put_nowait(message["body"])
            job.notify()
        elif kind == "state":
            job.options["saved_state"] = message["state"]
            if job.mode is Mode.QUEUE:
                self.store.set_options(job.id, job.options)
        elif kind == "progress":
            job.progress = {"step": message["step"], "total": message["total"],
                            "message": message.get("message")}
            job.notify()

    def _on_runner_exit(self, runner: RunnerHandle) -> None:
        for attempt in list(runner.in_flight.values()):
            status, error_type = attempt.failure or (503, "runner_disconnected")
            detail = {"request_timeout": "The request exceeded its request_timeout",
                      "client_cancelled": "Request cancelled",
                      "runner_disconnected": "The runner stopped while serving the request",
                      }[error_type]
            retry = error_type != "client_cancelled"
            self._end_attempt(attempt, failure(status, detail, error_type), retry)
        runner.in_flight.clear()

    def _end_attempt(self, attempt: Attempt, outcome: Outcome, retry: bool) -> None:
        """Record how an attempt ended; retry it (``retry`` and the job allows) or finish."""
        job = attempt.job
        self._release_attempt(attempt)
        failed = outcome.status >= 500 or outcome.status == 499
        if job.mode is Mode.QUEUE:
            self.store.end_attempt(job.id, attempt.number, time.time(),
                                   "failed" if failed else "ok",
                                   outcome.error_type or _body_error_type(outcome.body))
        if job.cancel_requested and outcome.status >= 500:
            outcome = cancelled()
        if retry and job.may_retry():
            log.info("request %s: attempt %d failed with %d, retrying", job.id,
                     attempt.number, outcome.status)
            job.status = Status.IN_QUEUE
            self.store.requeue(job.id)
            self._arm_start_deadline(job)
            self.pools[job.app_ref].enqueue(job, front=True)
            job.notify()
            return
        if not outcome.ok and outcome.error_type is None:
            outcome.error_type = _body_error_type(outcome.body) or _default_error_type(
                outcome.status)
            outcome.error = _body_detail(outcome.body)
            outcome.headers.setdefault("x-fal-error-type", outcome.error_type)
        self._finish(job, outcome)

    def _release_attempt(self, attempt: Attempt) -> None:
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.job.attempt = None
        self._key_slot_freed(attempt.job)
        self._attempt_ended.set()

    def _on_setup_failure(self, pool: AppPool, setup: SetupFailed) -> None:
        if setup.answer is not None:
            status, body = setup.answer
            error_type = _body_error_type(body) or _default_error_type(status)
            outcome = Outcome(status=status, body=body, error=_body_detail(body),
                              error_type=error_type, headers={"x-fal-error-type": error_type})
        else:
            outcome = failure(503, f"No runner could be started for {pool.app.app_id}: {setup}",
                              "runner_scheduling_failure")
        for job in pool.take_waiting():
            self._finish(job, outcome)

    # Start deadlines (X-Fal-Request-Timeout)
    def _arm_start_deadline(self, job: Job) -> None:
        deadline = job.start_deadline
        if deadline is None:
            return
        if job.deadline_timer is not None:
            job.deadline_timer.cancel()
        delay = max(0.0, deadline - time.time())
        job.deadline_timer = asyncio.get_running_loop().call_later(
            delay, self._start_deadline_passed, job)

    def _start_deadline_passed(self, job: Job) -> None:
        if job.finished or job.attempt is not None:
            return
        self.pools[job.app_ref].remove(job)
        self._finish(job, failure(
            504, "The request did not start before its X-Fal-Request-Timeout",
            "request_timeout", {"x-fal-request-timeout-type": "user"}))

    # Outcomes
    def _finish(self, job: Job, outcome: Outcome) -> None:
        """End a job: a direct one at once, a queued one once its outcome is committed."""
        if job.finished:
            return
        job.finished = True
        self._stop_waiting(job)
        if job.deadline_timer is not None:
            job.deadline_timer.cancel()
        finished_at = time.time()
        if job.mode is Mode.QUEUE:
            self._spawn(self._commit(job, outcome, finished_at), name=f"commit {job.id}")
            return
        self.store.add_request(self._finished_record(job, outcome, finished_at))
        self._publish(job, outcome)

    async def _commit(self, job: Job, outcome: Outcome, finished_at: float) -> None:
        webhook = webhook_target(job.options, job.key_id)
        failures = 0
        while True:
            try:
                await self.store.complete(job.id, outcome, finished_at, webhook)
                break
            except Exception:
                # The outcome must be stored before anyone is told (disk full, say): keep
                # trying; until then the request still reads as in progress.
                failures += 1
                log.exception("storing the outcome of %s failed (%d)", job.id, failures)
                await asyncio.sleep(min(2.0 ** failures, 30.0))
        if webhook is not None:
            self.on_webhook_queued()
        self._remember(self._finished_record(job, outcome, finished_at), job.logs)
        self._publish(job, outcome)

    def _remember(self, record: RequestRecord, logs: list[LogEntry]) -> None:
        """Keep a just-finished request in memory: its callers' last status poll and result
        fetch, which come right after, then need no database read."""
        if len(record.payload) + len(record.result_body or b"") > RECENT_MAX_BYTES:
            return
        self.recent[record.id] = (record, list(logs))
        if len(self.recent) > RECENT_LIMIT:
            self.recent.popitem(last=False)

    def recently_finished(self, request_id: str) -> tuple[RequestRecord, list[LogEntry]] | None:
        entry = self.recent.get(request_id)
        if entry is None or entry[0].finished_at is None:
            return None
        if entry[0].finished_at < time.time() - self.retention_seconds:
            del self.recent[request_id]
            return None
        return entry

    def _publish(self, job: Job, outcome: Outcome) -> None:
        job.status = Status.COMPLETED
        self.jobs.pop(job.id, None)
        job.notify()
        if not job.done.done():
            job.done.set_result(outcome)

    @staticmethod
    def _finished_record(job: Job, outcome: Outcome, finished_at: float) -> RequestRecord:
        record = job.to_record()
        record.status = Status.COMPLETED
        record.finished_at = finished_at
        record.result_status = outcome.status
        record.result_body = outcome.body
        record.result_headers = outcome.headers
        record.error, record.error_type = outcome.error, outcome.error_type
        record.inference_time = outcome.inference_time
        record.billable_units = outcome.billable_units
        if not job.store_io:
            record.payload, record.result_body = b"", None
        return record

    # Shutdown
    def running_attempts(self) -> list[Attempt]:
        return [attempt for pool in self.pools.values() for runner in pool.runners.values()
                for attempt in runner.in_flight.values()]

    async def drain(self, grace_seconds: float) -> int:
        """Stop taking work and let running requests finish for up to ``grace_seconds``;
        then hand back what is still running. Returns how many requests were handed back.

        Queued requests that have not started stay in the store and resume after a restart;
        direct callers still waiting are answered 503 at once (they can retry).
        """
        self.accepting = False
        for pool in self.pools.values():
            pool.paused = True
            # Queued requests stay where they are (and IN_QUEUE in the store).
            for job in pool.take_waiting(Priority.DIRECT):
                self._finish(job, shutting_down())
        deadline = time.monotonic() + grace_seconds
        while self.running_attempts() and (left := deadline - time.monotonic()) > 0:
            self._attempt_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._attempt_ended.wait(), left)
        running = self.running_attempts()
        for attempt in running:
            self._hand_back(attempt)
        # Outcomes being committed are part of finishing.
        commits = [task for task in self._background if task.get_name().startswith("commit")]
        if commits:
            await asyncio.wait(commits, timeout=max(1.0, deadline - time.monotonic()))
        self.drained = True
        for job in list(self.jobs.values()):
            job.notify()
        return len(running)

    def _hand_back(self, attempt: Attempt) -> None:
        """End a running attempt because the server is stopping: a queued request goes back
        to the queue without using up a retry; a direct caller gets a retryable 503."""
        job = attempt.job
        attempt.runner.in_flight.pop(job.id, None)
        self._release_attempt(attempt)
        attempt.runner.kill()
        if job.mode is Mode.QUEUE:
            job.status = Status.IN_QUEUE
            job.options["handed_back"] = job.options.get("handed_back", 0) + 1
            self.store.hand_back(job.id, attempt.number, time.time(), job.options)
            job.notify()
        else:
            self._finish(job, shutting_down())

    # Housekeeping
    async def _purge_loop(self) -> None:
        interval = min(3600.0, max(1.0, self.retention_seconds / 10))
        while True:
            try:
                removed = await self.store.purge_finished_before(
                    time.time() - self.retention_seconds)
            except Exception:
                log.exception("retention purge failed; trying again later")
            else:
                if removed:
                    log.info("removed %d requests past their retention", removed)
            await asyncio.sleep(interval)

    def _spawn(self, coro: Any, name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Views
    def queue_position(self, job: Job) -> int:
        return self.pools[job.app_ref].position(job)

    def runners(self) -> list[dict[str, Any]]:
        return [runner.describe() for pool in self.pools.values()
                for runner in pool.runners.values()]


def shutting_down() -> Outcome:
    """The answer to work refused or ended because the server is stopping (retryable)."""
    return failure(503, "The server is shutting down; try again", "server_shutting_down",
                   {"retry-after": "1"})


def _needs_retry(status: int, headers: dict[str, str]) -> bool:
    """The hosted platform's rule: 503 and 504 are retried; an app can say otherwise with
    ``X-Fal-Needs-Retry: 0|1``."""
    override = headers.get("x-fal-needs-retry")
    if override in ("0", "1"):
        return override == "1"
    return status in _RETRY_STATUSES


def _body_json(body: bytes) -> Any:
    with contextlib.suppress(ValueError):
        return json.loads(body)
    return None


def _body_error_type(body: bytes) -> str | None:
    parsed = _body_json(body)
    return parsed.get("error_type") if isinstance(parsed, dict) else None


def _body_detail(body: bytes) -> str:
    parsed = _body_json(body)
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if isinstance(detail, str):
        return detail
    return json.dumps(detail) if detail is not None else body.decode(errors="replace")[:500]


def _default_error_type(status: int) -> str:
    if status == 422:
        return "validation_error"
    if status < 500:
        return "bad_request"
    if status == 504:
        return "request_timeout"
    if status == 503:
        return "runner_unavailable"
    return "runner_server_error"
