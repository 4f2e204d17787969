"""The dispatcher: a gateway's side of every request's path, over the store's queue.

The store holds every request, waiting and running (a row each). The dispatcher puts new
requests there, hands work to the workers that claim it (its own runners, in process, and
``openfal worker`` processes through the gateway's worker API: the same calls), takes
their reports and results, and decides each attempt's end: a retry or the outcome. Every
decision about an attempt is fenced in the store by the attempt's id, so a worker that
lost its lease cannot record anything; a lapsed lease (its worker died or froze) is found
by the reaper of any gateway and ends as a lost attempt.

A request this gateway accepted or streams has a :class:`Job` here, kept in step by what
passes through this dispatcher and, for what happens on other gateways, by the store's
events; callers waiting on this gateway (status streams, direct runs) wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from openfal.app.registry import Registry, ServedApp
from openfal.dispatcher.jobs import Job, Priority, may_retry
from openfal.dispatcher.positions import QueuePositions
from openfal.ids import new_id
from openfal.runner.protocol import Log, Partial, Progress, Result, SavedState
from openfal.secrets import STORE_PREFIX as SECRETS_PREFIX
from openfal.store.base import (
    UNSTARTED,
    AppRevision,
    Claim,
    LeaseReport,
    LogEntry,
    Mode,
    Outcome,
    RequestRecord,
    Status,
    Store,
)
from openfal.store.events import (
    CancelRequested,
    Event,
    PartialProduced,
    Progressed,
    RequestChanged,
    WorkAdded,
)
from openfal.webhooks.targets import webhook_target
from openfal.worker.link import Assignment, ClaimReply, Report
from openfal.worker.worker import DEFAULT_LEASE_SECONDS

log = logging.getLogger(__name__)

# Just-finished requests kept in memory (see Dispatcher._remember).
RECENT_LIMIT = 4096
RECENT_MAX_BYTES = 256 * 1024  # one request's input and result
RECENT_TOTAL_BYTES = 64 * 1024 * 1024
WAITING_COUNT_CAP = 4096
QUIET_JOB_SECONDS = 5.0  # with a shared store, a watched job unchanged this long is re-read
QUIET_JOBS_PER_TICK = 50  # a worker scales on how much waits, up to this many
ANY_ENDPOINT = "*"  # a WorkAdded for every endpoint: a key's slot was freed
STALE_CLAIM_PAUSE_SECONDS = 1.0  # a superseded revision's claim is answered after this

# Runner answers that mean "this runner is unwell, try another": the hosted platform's rule.
_RETRY_STATUSES = {503, 504}


def failure(status: int, detail: str, error_type: str,
            headers: dict[str, str] | None = None) -> Outcome:
    body = json.dumps({"detail": detail, "error_type": error_type}).encode()
    return Outcome(status=status, body=body, error=detail, error_type=error_type,
                   headers={"x-fal-error-type": error_type, **(headers or {})})


def cancelled() -> Outcome:
    return failure(499, "Request cancelled", "client_cancelled")


def shutting_down() -> Outcome:
    """The answer to work refused or ended because the server is stopping (retryable)."""
    return failure(503, "The server is shutting down; try again", "server_shutting_down",
                   {"retry-after": "1"})


def lost_runner() -> Outcome:
    return failure(503, "The runner stopped while serving the request",
                   "runner_disconnected")


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


@dataclass(eq=False)
class _ParkedClaim:
    """A worker's claim waiting for work on this gateway: woken (``None``) when work may
    have arrived, or handed claims directly (direct runs, up to its limit: those that come
    before the claimant resumes join the list it is answered with)."""

    worker_id: str
    endpoint_ids: frozenset[str]
    limit: int
    handed: list[Claim] = field(default_factory=list)
    future: asyncio.Future[list[Claim] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def can_take(self, endpoint_id: str) -> bool:
        if endpoint_id not in self.endpoint_ids or len(self.handed) >= self.limit:
            return False
        # Not answered yet, or answered with the list of handed claims.
        return not self.future.done() or (not self.future.cancelled()
                                          and self.future.result() is self.handed)


@dataclass(eq=False)
class _ClaimUnderWay:
    """A worker's claim asking the store for work: direct runs arriving meanwhile wait on
    it (``pending``) and take the room it has left when the store answers."""

    worker_id: str
    endpoint_ids: frozenset[str]
    limit: int
    pending: list[Job] = field(default_factory=list)


@dataclass(eq=False)
class _ParkedRenewal:
    """A worker's lease renewal waiting on this gateway for a cancel of one of the requests
    it runs (those it named, and those claimed through this gateway since)."""

    watched: set[str]
    future: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Dispatcher:
    def __init__(self, store: Store, registry: Registry, *, retention_seconds: float,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS,
                 max_waiting_direct_per_key: int | None = None):
        self.store = store
        self.registry = registry
        self.retention_seconds = retention_seconds
        self.lease_seconds = lease_seconds
        self.max_waiting_direct_per_key = max_waiting_direct_per_key
        self.jobs: dict[str, Job] = {}
        # Positions kept here when this process owns the store; None: asked of the store.
        self.positions = QueuePositions() if not store.shared else None
        # Direct runs waiting for a runner per API key (bounded: abandoned callers are
        # cancelled, but a flood of live ones must not starve everyone else).
        self.waiting_direct_by_key: Counter[str] = Counter()
        self.accepting = True
        self.drained = False  # set once a shutdown drain is over: status streams end
        self.recent: OrderedDict[str, tuple[RequestRecord, list[LogEntry]]] = OrderedDict()
        self._recent_bytes = 0
        self._parked: list[_ParkedClaim] = []
        self._claiming: list[_ClaimUnderWay] = []
        # Endpoints whose waiting work may not all have been claimed: set when work is added
        # (here, or another gateway's WorkAdded), cleared by a claim that took less than it
        # asked. A claim for endpoints with no mark skips the store; a claim that waited its
        # whole time looks anyway (another gateway's event may have been lost).
        self._may_wait: dict[str, bool] = {}
        # Workers whose lease lapsed (dead, frozen or cut off): no new work for them until
        # they renew or claim again, or a frozen worker's waiting claim would take the retry
        # too.
        self._silent_workers: OrderedDict[str, None] = OrderedDict()  # the newest 1024
        self._renewals: dict[str, _ParkedRenewal] = {}  # by worker id
        self._background: set[asyncio.Task] = set()
        self._unlisten: Callable[[], None] = lambda: None
        # Called once a finished request's webhook is committed (the delivery worker's wake).
        self.on_webhook_queued: Callable[[], None] = lambda: None
        # Called with each outcome committed here, and when it ended (metrics).
        self.on_complete: Callable[[RequestRecord, Outcome, float], None] = lambda *_: None

    # Lifecycle
    async def start(self) -> None:
        self._unlisten = self.store.notifier.listen(self._on_event)
        if self.positions is not None:
            for record in await self.store.waiting_requests():
                if record.mode is Mode.QUEUE:
                    self.positions.add(record)
                else:  # a direct run whose caller went away with the last server
                    await self._complete(record, shutting_down())
        if not self.store.shared:
            # This process owns the store: the runners of the one before it are gone, so
            # their leases have lapsed already (the reaper retries their requests now).
            released = await self.store.release_leases("local:")
            if released:
                log.info("%d requests were running when the server stopped; retrying them",
                         released)
        self._spawn(self._reap_loop())
        self._spawn(self._purge_loop())

    async def stop(self) -> None:
        self._unlisten()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # Entry points of the gateway
    def new_job(self, app: ServedApp, path: str, payload: bytes, headers: dict[str, str],
                mode: Mode, priority: Priority, options: dict[str, Any],
                key_id: str | None = None) -> Job:
        return Job(id=new_id(), app_id=app.app_id, endpoint_id=app.endpoint_id(path),
                   path=path, mode=mode, payload=payload, headers=headers,
                   priority=priority, created_at=time.time(), options=options, key_id=key_id)

    async def submit(self, job: Job, max_queue_length: int | None = None) -> None:
        """Accept a queued request: returns once it is committed to the store.

        A worker waiting on this gateway for work of its endpoint (so none waits before
        this one) is handed it at once, claimed as it is stored: its runner starts while
        the row commits, rather than once a second write has claimed it. A request with a
        key limit is claimed by the store, which counts the key's running requests."""
        self._check_accepting()
        if max_queue_length is not None:
            waiting = await self.store.waiting(self._app_endpoints(job.app_id),
                                               max_queue_length)
            if waiting >= max_queue_length:
                raise QueueFull(waiting)
        stored = self._hand_to_parked(job) if job.key_limit is None else None
        if stored is not None:
            self.jobs[job.id] = job
            try:
                await stored
            except Exception:
                # Not accepted: its attempt finds no row when it ends, and is dropped.
                self.jobs.pop(job.id, None)
                raise
            return
        record = job.to_record()
        await self.store.add_request(record)
        self.jobs[job.id] = job
        self._waits(record)

    async def start_direct(self, job: Job) -> asyncio.Future[Outcome]:
        """Run a request now, ahead of queued work and never retried; the future resolves
        to its outcome. Whoever stops waiting for it calls ``cancel``."""
        self._check_accepting()
        if job.key_id is not None:
            await self._check_direct_bounds(job)
        self.jobs[job.id] = job
        if self._hand_to_parked(job) is None and not self._wait_on_claim_under_way(job):
            await self._wait_in_store(job)
        return job.done

    def _wait_on_claim_under_way(self, job: Job) -> bool:
        """Let a direct run wait on a claim with room for its endpoint that is asking the
        store for work right now: when the store answers, the run takes the room left
        (a write less than waiting in the store, and no second claim to wait for)."""
        for taking in self._claiming:
            if (job.endpoint_id in taking.endpoint_ids
                    and len(taking.pending) < taking.limit
                    and taking.worker_id not in self._silent_workers):
                taking.pending.append(job)
                job.pending_on = taking.pending
                return True
        return False

    async def _wait_in_store(self, job: Job) -> None:
        """A direct run no worker can take now waits in the store for a claim, from any
        gateway's workers."""
        self._count_waiting(job)
        record = job.to_record()
        await self.store.add_request(record)
        self._waits(record)

    async def _wait_in_store_or_fail(self, job: Job) -> None:
        try:
            await self._wait_in_store(job)
        except Exception:
            log.exception("request %s: storing it failed", job.id)
            self.jobs.pop(job.id, None)
            self._stop_waiting(job)
            if not job.done.done():
                job.done.set_result(failure(503, "The request could not be stored",
                                            "store_unavailable"))

    def _settle_pending(self, taking: _ClaimUnderWay, room: int) -> list[Claim]:
        """The direct runs that waited on a claim: as many as it has room left for are
        claimed by it, the others wait in the store."""
        claims = []
        for job in taking.pending:
            job.pending_on = None
            if len(claims) < room:
                claims.append(self._claim_in_memory(job, taking.worker_id)[0])
            else:
                self._spawn(self._wait_in_store_or_fail(job))
        taking.pending.clear()
        return claims

    async def _check_direct_bounds(self, job: Job) -> None:
        assert job.key_id is not None
        limit = job.key_limit
        if limit is not None and await self.store.running_for_key(job.key_id) >= limit:
            raise KeyAtLimit(f"This key already has {limit} requests running")
        bound = self.max_waiting_direct_per_key
        if bound is not None and self.waiting_direct_by_key[job.key_id] >= bound:
            raise KeyAtLimit(f"This key already has {bound} direct requests waiting "
                             "for a runner")

    def _count_waiting(self, job: Job) -> None:
        if job.key_id is not None:
            self.waiting_direct_by_key[job.key_id] += 1
            job.counted_waiting = True

    def _stop_waiting(self, job: Job) -> None:
        if job.counted_waiting and job.key_id is not None:
            job.counted_waiting = False
            self.waiting_direct_by_key[job.key_id] -= 1
            if not self.waiting_direct_by_key[job.key_id]:
                del self.waiting_direct_by_key[job.key_id]

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown()

    async def cancel(self, request_id: str) -> CancelResult:
        job = self.jobs.get(request_id)
        record = job.to_record() if job is not None else await self.store.get_request(
            request_id)
        if record is None:
            return CancelResult.NOT_FOUND
        if record.status is Status.COMPLETED or (job is not None and job.finished):
            return CancelResult.ALREADY_COMPLETED
        if record.status is Status.IN_QUEUE and await self._complete(record, cancelled()):
            return CancelResult.CANCELLATION_REQUESTED
        # Running (or it started since it was read): its worker stops it.
        if job is not None:
            job.cancel_requested = True
        await self.store.request_cancel(request_id)
        self._wake_cancel_watchers(request_id)
        self.store.notifier.publish(CancelRequested(request_id))
        return CancelResult.CANCELLATION_REQUESTED

    def abandon(self, request_id: str) -> None:
        """Its caller went away: cancel it in the background."""
        self._spawn(self.cancel(request_id))

    async def watch(self, record: RequestRecord) -> Job:
        """This gateway's view of a request it did not accept (or accepted before a
        restart), kept in step until it ends: for status streams."""
        job = self.jobs.get(record.id)
        if job is None:
            job = Job.from_record(record)
            job.add_logs(await self.store.get_logs(record.id))
            job.progress, job.latest_partial = await self.store.get_live(record.id)
            self.jobs[record.id] = job
            await self._refresh(job)  # it may have changed while being read
        return job

    async def queue_position(self, request_id: str) -> int | None:
        """Waiting requests of the same app ahead of this one; None unless it waits."""
        if self.positions is not None:
            return self.positions.position(request_id)
        return await self.store.queue_position(request_id)

    def _waits(self, record: RequestRecord) -> None:
        """The request waits in the queue (new, or back for another attempt)."""
        if self.positions is not None:
            self.positions.add(record)
        self._work_added(record.endpoint_id)

    # The work API: what workers call (this gateway's own runners directly, remote
    # workers through gateway/worker_routes.py)
    async def claim(self, worker_id: str, endpoint_ids: list[str], limit: int,
                    wait: float, revision: int | None = None) -> ClaimReply:
        # A claim arriving is the worker alive now (one that resumed holding nothing never
        # renews); a claim it parked before it went silent still gets nothing.
        self._silent_workers.pop(worker_id, None)
        if revision is not None and self._superseded(endpoint_ids, revision):
            # A pool of a deployed app's old revision, on a worker that has not switched
            # yet: the app's next requests start on the current revision, elsewhere.
            await asyncio.sleep(min(wait, STALE_CLAIM_PAUSE_SECONDS))
            return ClaimReply([], 0)
        claims = await self._claim_now(worker_id, endpoint_ids, limit)
        waiting = await self._waiting_after(endpoint_ids, limit, claims)
        if (not claims and not waiting and wait > 0 and self.accepting
                and not self._work_marked(endpoint_ids)):
            parked = _ParkedClaim(worker_id, frozenset(endpoint_ids), limit)
            self._parked.append(parked)
            try:
                handed = await asyncio.wait_for(parked.future, wait)
            except TimeoutError:
                handed = None
                self._mark_work(endpoint_ids)
            finally:
                with contextlib.suppress(ValueError):
                    self._parked.remove(parked)
            claims = handed if handed is not None else await self._claim_now(
                worker_id, endpoint_ids, limit)
            waiting = await self._waiting_after(endpoint_ids, limit, claims)
        if revision is not None and self._superseded(endpoint_ids, revision):
            # The app was redeployed while the claim was made: not on the old code.
            for claim in claims:
                self._spawn(self.hand_back(claim.attempt_id, claim.request.id, False))
            return ClaimReply([], 0)
        return ClaimReply([self._started(claim) for claim in claims], waiting)

    def _superseded(self, endpoint_ids: list[str], revision: int) -> bool:
        found = self.registry.resolve(endpoint_ids[0]) if endpoint_ids else None
        return found is None or found[0].revision != revision

    def unanswered(self, reply: ClaimReply) -> None:
        """A claim's answer its worker never got (it went away meanwhile): its attempts go
        back to wait, as if never claimed, rather than failing when their leases lapse."""
        for assignment in reply.assignments:
            self._spawn(self.hand_back(assignment.attempt_id, assignment.request_id,
                                       started=False))

    async def _waiting_after(self, endpoint_ids: list[str], limit: int,
                             claims: list[Claim]) -> int:
        """What still waits, when it matters to the worker's scaling: it asked for no work,
        or took all it asked for (fewer: nothing more it could take waits), and work may
        wait at all."""
        if not self._work_marked(endpoint_ids):
            return 0
        if limit == 0:
            # Asked only how much waits (it has no room): none now means its next claim
            # parks until work is added (which marks the endpoints again), not a count each
            # time round.
            for endpoint_id in endpoint_ids:
                self._may_wait[endpoint_id] = False
            waiting = await self.store.waiting(endpoint_ids, WAITING_COUNT_CAP)
            if waiting:
                self._mark_work(endpoint_ids)
            return waiting
        if claims and len(claims) == limit:
            return await self.store.waiting(endpoint_ids, WAITING_COUNT_CAP)
        return 0

    async def _claim_now(self, worker_id: str, endpoint_ids: list[str],
                         limit: int) -> list[Claim]:
        if (limit <= 0 or not self.accepting or worker_id in self._silent_workers
                or not self._work_marked(endpoint_ids)):
            return []
        for endpoint_id in endpoint_ids:
            self._may_wait[endpoint_id] = False  # work added from now on marks it again
        taking = _ClaimUnderWay(worker_id, frozenset(endpoint_ids), limit)
        self._claiming.append(taking)
        try:
            claims = await self.store.claim(endpoint_ids, worker_id, limit=limit,
                                            lease_seconds=self.lease_seconds, now=time.time())
        except BaseException:
            # Cancelled (its worker went away) or failed: it takes none of them.
            self._claiming.remove(taking)
            self._settle_pending(taking, 0)
            raise
        self._claiming.remove(taking)
        if len(claims) == limit:
            self._mark_work(endpoint_ids)  # there may be more
        return claims + self._settle_pending(taking, limit - len(claims))

    def _work_marked(self, endpoint_ids: list[str] | frozenset[str]) -> bool:
        return any(self._may_wait.get(endpoint_id, True) for endpoint_id in endpoint_ids)

    def _mark_work(self, endpoint_ids: Iterable[str]) -> None:
        for endpoint_id in endpoint_ids:
            self._may_wait[endpoint_id] = True

    def _hand_to_parked(self, job: Job) -> asyncio.Future[None] | None:
        """Give a new request straight to a worker waiting on this gateway for work of its
        endpoint, if there is one: a claim made here, recorded as the request is stored.
        Returns that write (None: no worker waits for it)."""
        for parked in self._parked:
            if (parked.can_take(job.endpoint_id)
                    and parked.worker_id not in self._silent_workers):
                claim, stored = self._claim_in_memory(job, parked.worker_id)
                parked.handed.append(claim)
                if not parked.future.done():
                    parked.future.set_result(parked.handed)
                return stored
        return None

    def _claim_in_memory(self, job: Job, worker_id: str) -> tuple[Claim, asyncio.Future[None]]:
        """A new request claimed without asking the store, and the write that stores its
        row with the claim."""
        now = time.time()
        record = job.to_record()
        record.status, record.attempts, record.started_at = Status.IN_PROGRESS, 1, now
        claim = Claim(record, new_id(), now + self.lease_seconds, worker_id)
        return claim, self.store.add_request(claim.request, claim)

    def _started(self, claim: Claim) -> Assignment:
        if self.positions is not None:
            self.positions.remove(claim.request.id)
        if (renewal := self._renewals.get(claim.worker_id)) is not None:
            # Watched from now on, without the worker asking again.
            renewal.watched.add(claim.request.id)
        job = self.jobs.get(claim.request.id)
        if job is not None:
            self._stop_waiting(job)
            job.status = Status.IN_PROGRESS
            job.attempts = claim.request.attempts
            job.started_at = job.started_at or claim.request.started_at
            job.attempt_started_at = time.time()
            job.notify()
        self.store.notifier.publish(RequestChanged(claim.request.id))
        return Assignment.from_claim(claim)

    def _work_added(self, endpoint_id: str) -> None:
        self._wake_parked(endpoint_id)
        self.store.notifier.publish(WorkAdded(endpoint_id))

    def _wake_parked(self, endpoint_id: str) -> None:
        """Work for ``endpoint_id`` (or, ``ANY_ENDPOINT``, for any) may wait: claims look."""
        if endpoint_id == ANY_ENDPOINT:
            self._may_wait.clear()  # unknown endpoints count as marked
        else:
            self._may_wait[endpoint_id] = True
        for parked in list(self._parked):
            if endpoint_id == ANY_ENDPOINT and parked.limit == 0:
                continue  # a freed key slot changes no count: only claims with room look
            if ((endpoint_id == ANY_ENDPOINT or endpoint_id in parked.endpoint_ids)
                    and not parked.future.done()):
                parked.future.set_result(None)

    async def renew(self, worker_id: str, attempt_ids: list[str], watch: list[str],
                    wait: float) -> LeaseReport:
        self._silent_workers.pop(worker_id, None)  # it is alive
        report = LeaseReport()
        if attempt_ids:
            report = await self.store.renew_leases(worker_id, attempt_ids,
                                                   time.time() + self.lease_seconds)
        report.cancelled += [rid for rid in watch
                             if (job := self.jobs.get(rid)) is not None and job.cancel_requested]
        if report.lost or report.cancelled or wait <= 0 or not watch:
            return report
        parked = self._renewals[worker_id] = _ParkedRenewal(set(watch))
        try:
            report.cancelled.append(await asyncio.wait_for(parked.future, wait))
        except TimeoutError:
            pass
        finally:
            if self._renewals.get(worker_id) is parked:
                del self._renewals[worker_id]
        return report

    def _wake_cancel_watchers(self, request_id: str) -> None:
        for parked in self._renewals.values():
            if request_id in parked.watched and not parked.future.done():
                parked.future.set_result(request_id)

    def report(self, attempt_id: str, message: Report) -> None:
        job = self.jobs.get(message.id)
        if isinstance(message, Log):
            entry = LogEntry(message.message, message.level, message.source, time.time())
            self.store.add_logs(message.id, [entry])
            self.store.notifier.publish(RequestChanged(message.id))
            if job is not None:
                job.add_logs([entry])
        elif isinstance(message, Progress):
            progress = {"step": message.step, "total": message.total,
                        "message": message.message}
            if self._live_read_from_store(job):
                self.store.set_live(message.id, progress, None)
            self.store.notifier.publish(Progressed(message.id, message.step, message.total,
                                                   message.message))
            if job is not None:
                job.progress = progress
        elif isinstance(message, Partial):
            if self._live_read_from_store(job):
                self.store.set_live(message.id, None, message.body)
            self.store.notifier.publish(PartialProduced(message.id, message.body))
            if job is not None:
                job.add_partial(message.body)
        elif isinstance(message, SavedState):
            self._spawn(self._save_state(message))
        if job is not None:
            job.notify()

    def _live_read_from_store(self, job: Job | None) -> bool:
        """Whether a request's progress and newest partial must be written to the store for
        its readers: other gateways (a shared store), or, with this process owning the
        store, readers of a request it keeps no job for (one accepted before a restart).
        Otherwise every reader asks the job: a write per step would only load the store."""
        return self.store.shared or job is None

    async def _save_state(self, message: SavedState) -> None:
        job = self.jobs.get(message.id)
        record = job.to_record() if job is not None else await self.store.get_request(
            message.id)
        if record is not None:
            record.options["saved_state"] = message.state
            self.store.set_options(message.id, record.options)

    async def finish(self, attempt_id: str, result: Result, started: bool = True) -> bool:
        job = self.jobs.get(result.id)
        record = await self._current(result.id)
        if record is None:
            return False
        began = ((job.attempt_started_at if job is not None else None) or record.started_at
                 or time.time())
        outcome = Outcome(status=result.status, body=result.body, headers=result.headers,
                          inference_time=max(0.0, time.time() - began))
        return await self._end_attempt(record, attempt_id, outcome,
                                       _needs_retry(result.status, result.headers),
                                       UNSTARTED if not started else None)

    async def hand_back(self, attempt_id: str, request_id: str, started: bool) -> bool:
        """A worker gives an attempt back. Not ``started`` (it had no runner left for it):
        the claim is undone. Started (the worker is stopping): a queued request goes back
        to the queue without using up a retry; a direct caller gets a retryable 503."""
        record = await self._current(request_id)
        if record is None:
            return False
        if not started:
            requeued = await self.store.requeue(request_id, attempt_id, time.time(),
                                                UNSTARTED, None)
        elif record.mode is not Mode.QUEUE:
            return await self._complete(record, shutting_down(), attempt_id, "interrupted")
        else:
            record.options["handed_back"] = record.options.get("handed_back", 0) + 1
            requeued = await self.store.requeue(request_id, attempt_id, time.time(),
                                                "interrupted", "server_shutdown",
                                                record.options)
        if requeued:
            self._back_in_queue(record, record.options)
        return requeued

    async def deployed_apps(self) -> dict[str, AppRevision]:
        return await self.store.current_app_revisions()

    async def app_bundle(self, app_id: str, revision: int) -> bytes | None:
        return await self.store.app_bundle(app_id, revision)

    async def secrets(self, names: list[str] | None) -> dict[str, bytes]:
        stored = {name.removeprefix(SECRETS_PREFIX): sealed
                  for name, sealed in await self.store.list_secrets(SECRETS_PREFIX)}
        return stored if names is None else {n: stored[n] for n in names if n in stored}

    async def _current(self, request_id: str) -> RequestRecord | None:
        job = self.jobs.get(request_id)
        return job.to_record() if job is not None else await self.store.get_request(request_id)

    # Ending attempts
    async def _end_attempt(self, record: RequestRecord, attempt_id: str, outcome: Outcome,
                           retry: bool, attempt_outcome: str | None = None) -> bool:
        """Record how an attempt ended (``attempt_outcome``: by default "ok" or "failed"
        from its status): a retry (``retry`` and the request allows) or the outcome. False
        if ``attempt_id`` was not the request's current attempt."""
        failed = outcome.status >= 500 or outcome.status == 499
        attempt_outcome = attempt_outcome or ("failed" if failed else "ok")
        if record.cancel_requested and outcome.status >= 500:
            outcome = cancelled()
        if retry and may_retry(record):
            error_type = outcome.error_type or _body_error_type(outcome.body)
            requeued = await self.store.requeue(record.id, attempt_id, time.time(),
                                                attempt_outcome, error_type)
            if requeued:
                log.info("request %s: attempt %d failed with %d, retrying", record.id,
                         record.attempts, outcome.status)
                self._back_in_queue(record, None)
            return requeued
        if not outcome.ok and outcome.error_type is None:
            outcome.error_type = _body_error_type(outcome.body) or _default_error_type(
                outcome.status)
            outcome.error = _body_detail(outcome.body)
            outcome.headers.setdefault("x-fal-error-type", outcome.error_type)
        return await self._complete(record, outcome, attempt_id, attempt_outcome)

    def _back_in_queue(self, record: RequestRecord, options: dict[str, Any] | None) -> None:
        job = self.jobs.get(record.id)
        if job is not None:
            job.status = Status.IN_QUEUE
            job.progress = None
            if options is not None:
                job.options = options
            job.notify()
        self.store.notifier.publish(RequestChanged(record.id))
        record.status = Status.IN_QUEUE
        self._waits(record)

    async def _complete(self, record: RequestRecord, outcome: Outcome,
                        attempt_id: str | None = None,
                        attempt_outcome: str | None = None) -> bool:
        """Commit the outcome (fenced: by the attempt, or, without one, only while the
        request waits) before anyone is told; False if the fence refused it. A direct
        caller, who holds no id to ask again with, is answered at once: a direct run is
        never retried, so the only outcome that could win the fence instead (its lease
        lapsed) has answered the caller already."""
        job = self.jobs.get(record.id)
        if job is not None and job.mode is not Mode.QUEUE and not job.done.done():
            job.done.set_result(outcome)
        if job is not None and job.pending_on is not None:
            # It waited on a claim under way, so it is not in the store yet: it is stored
            # first, and its outcome then recorded as any waiting request's.
            job.pending_on.remove(job)
            job.pending_on = None
            await self.store.add_request(job.to_record())
        webhook = webhook_target(record.options, record.key_id)
        finished_at = time.time()
        failures = 0
        while True:
            try:
                committed = await self.store.complete(
                    record.id, outcome, finished_at, webhook, attempt_id=attempt_id,
                    attempt_outcome=attempt_outcome,
                    keep_io=not record.options.get("transient_io"))
                break
            except Exception:
                # The outcome must be stored before anyone is told (disk full, say): keep
                # trying; until then the request still reads as unfinished.
                failures += 1
                log.exception("storing the outcome of %s failed (%d)", record.id, failures)
                await asyncio.sleep(min(2.0 ** failures, 30.0))
        if not committed:
            return False
        self.on_complete(record, outcome, finished_at)
        if self.positions is not None:
            self.positions.remove(record.id)
        if webhook is not None:
            self.on_webhook_queued()
        if (record.key_id is not None and record.options.get("key_limit") is not None
                and record.status is Status.IN_PROGRESS):
            self._work_added(ANY_ENDPOINT)  # the key's slot is free: held-back work may go
        self.store.notifier.publish(RequestChanged(record.id))
        job = self.jobs.get(record.id)
        if job is not None:
            self._finish_job(job, self._finished_record(record, outcome, finished_at))
        return True

    def _finish_job(self, job: Job, record: RequestRecord) -> None:
        if job.finished:
            return
        job.finished = True
        self._stop_waiting(job)
        if job.mode is Mode.QUEUE:
            self._remember(record, job.logs)
        job.status = Status.COMPLETED
        self.jobs.pop(job.id, None)
        job.notify()
        if not job.done.done():
            job.done.set_result(Outcome(
                status=record.result_status or 500, body=record.result_body or b"",
                error=record.error, error_type=record.error_type,
                inference_time=record.inference_time, headers=record.result_headers))

    @staticmethod
    def _finished_record(record: RequestRecord, outcome: Outcome,
                         finished_at: float) -> RequestRecord:
        record.status = Status.COMPLETED
        record.finished_at = finished_at
        record.result_status = outcome.status
        record.result_body = outcome.body
        record.result_headers = outcome.headers
        record.error, record.error_type = outcome.error, outcome.error_type
        record.inference_time = outcome.inference_time
        record.billable_units = outcome.billable_units
        return record

    def _remember(self, record: RequestRecord, logs: list[LogEntry]) -> None:
        """Keep a just-finished request in memory: its callers' last status poll and result
        fetch, which come right after, then need no database read (bounded in count and
        bytes)."""
        size = len(record.payload) + len(record.result_body or b"")
        if size > RECENT_MAX_BYTES or len(logs) > 500:
            return
        self.recent[record.id] = (record, list(logs))
        self._recent_bytes += size
        while len(self.recent) > RECENT_LIMIT or self._recent_bytes > RECENT_TOTAL_BYTES:
            _, (old, _) = self.recent.popitem(last=False)
            self._recent_bytes -= len(old.payload) + len(old.result_body or b"")

    def recently_finished(self, request_id: str) -> tuple[RequestRecord, list[LogEntry]] | None:
        entry = self.recent.get(request_id)
        if entry is None or entry[0].finished_at is None:
            return None
        if entry[0].finished_at < time.time() - self.retention_seconds:
            self._recent_bytes -= len(entry[0].payload) + len(entry[0].result_body or b"")
            del self.recent[request_id]
            return None
        return entry

    def forget(self, request_id: str) -> None:
        """Drop a just-finished request from memory (its payloads are deleted)."""
        entry = self.recent.pop(request_id, None)
        if entry is not None:
            self._recent_bytes -= len(entry[0].payload) + len(entry[0].result_body or b"")

    # What other gateways did (the store's events)
    def _on_event(self, event: Event) -> None:
        if isinstance(event, WorkAdded):
            self._wake_parked(event.endpoint_id)
        elif isinstance(event, CancelRequested):
            if (job := self.jobs.get(event.request_id)) is not None:
                job.cancel_requested = True
            self._wake_cancel_watchers(event.request_id)
        elif (job := self.jobs.get(event.request_id)) is not None:
            if isinstance(event, Progressed):
                job.progress = {"step": event.step, "total": event.total,
                                "message": event.message}
                job.notify()
            elif isinstance(event, PartialProduced):
                job.add_partial(event.body)
                job.notify()
            else:
                self._refresh_soon(job)

    def _refresh_soon(self, job: Job) -> None:
        """Bring a job in step with the store (another gateway changed the request): one
        read at a time per job, and one more if it changed again meanwhile."""
        if job.refreshing is not None and not job.refreshing.done():
            job.refresh_again = True
            return
        job.refreshing = asyncio.get_running_loop().create_task(self._refresh_until_still(job))
        self._background.add(job.refreshing)
        job.refreshing.add_done_callback(self._background.discard)

    async def _refresh_until_still(self, job: Job) -> None:
        while True:
            job.refresh_again = False
            try:
                await self._refresh(job)
            except Exception:
                log.exception("request %s: reading it from the store failed", job.id)
            if not job.refresh_again:
                return

    async def _refresh(self, job: Job) -> None:
        record = await self.store.get_request(job.id)
        job.seen_at = time.monotonic()
        if record is None or job.finished:
            return
        new_logs = await self.store.get_logs(job.id, len(job.logs) + job.logs_dropped)
        if job.finished:
            return
        job.add_logs(new_logs)
        job.cancel_requested = job.cancel_requested or record.cancel_requested
        if record.status is Status.COMPLETED:
            self._finish_job(job, record)
            return
        if record.status is not job.status or record.attempts != job.attempts or new_logs:
            job.status, job.attempts = record.status, record.attempts
            job.notify()

    # Shutdown
    async def stop_accepting(self) -> None:
        """Take no new work; direct callers still waiting for a runner are answered 503
        (they can retry), queued requests stay in the store for later."""
        self.accepting = False
        for parked in list(self._parked):
            if not parked.future.done():
                parked.future.set_result(None)
        for job in list(self.jobs.values()):
            if job.mode is not Mode.QUEUE and job.status is Status.IN_QUEUE:
                await self._complete(job.to_record(), shutting_down())

    def drain_over(self) -> None:
        """The drain is over: status streams end (their clients reconnect elsewhere)."""
        self.drained = True
        for job in list(self.jobs.values()):
            job.notify()

    # Housekeeping
    async def _reap_loop(self) -> None:
        """End the attempts whose lease lapsed, and fail waiting requests past their
        start deadline. Every gateway runs it; the store's fences let one of them win."""
        interval = min(1.0, self.lease_seconds / 10)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reap(time.time())
            except Exception:
                log.exception("reaping lapsed leases failed; trying again")

    async def _reap(self, now: float) -> None:
        if self.store.shared:
            self._refresh_quiet_jobs()
        lapsed = await self.store.lapsed(now, 100)
        for claim in lapsed:
            self._silent_workers[claim.worker_id] = None
            if len(self._silent_workers) > 1024:
                self._silent_workers.popitem(last=False)
        for claim in lapsed:
            record = claim.request
            log.warning("request %s: attempt %d lost its lease (worker %s)", record.id,
                        record.attempts, claim.worker_id)
            await self._end_attempt(record, claim.attempt_id, lost_runner(), retry=True,
                                    attempt_outcome="lost")
        for record in await self.store.overdue(now, 100):
            await self._complete(record, failure(
                504, "The request did not start before its X-Fal-Request-Timeout",
                "request_timeout", {"x-fal-request-timeout-type": "user"}))

    def _refresh_quiet_jobs(self) -> None:
        """Events are hints and may be lost (a dropped connection): jobs watched here that
        heard nothing for a while are read from the store again, a few at a time."""
        cutoff = time.monotonic() - QUIET_JOB_SECONDS
        quiet = [job for job in self.jobs.values() if job.seen_at < cutoff]
        quiet.sort(key=lambda job: job.seen_at)
        for job in quiet[:QUIET_JOBS_PER_TICK]:
            job.seen_at = time.monotonic()
            self._refresh_soon(job)

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

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _app_endpoints(self, app_id: str) -> list[str]:
        return sorted(endpoint for app in self.registry.apps.values() if app.app_id == app_id
                      for endpoint in app.endpoint_ids())


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

