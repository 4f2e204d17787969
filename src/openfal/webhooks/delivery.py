"""The delivery worker: sends queued webhooks, at least once, and keeps a log of attempts.

Webhooks enter the store's outbox in the same transaction that completes their request.
This worker claims due ones, POSTs each signed payload with a per-attempt time limit, and
records every attempt: a 2xx answer delivers it; anything else (another status, a timeout,
a connection error, a refused address) schedules the next try after an exponentially
growing delay, until the tries run out and the webhook is marked failed. The worker wakes
when a webhook is queued or redelivered and otherwise sleeps until the next one is due;
after a restart, attempts the previous process had under way are tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from openfal.fetch import FetchError, NetworkPolicy, pinned_request
from openfal.store.base import RequestRecord, Store, WebhookAttempt, WebhookRecord
from openfal.webhooks.payload import webhook_body
from openfal.webhooks.signing import KeyRing, signed_headers

log = logging.getLogger(__name__)

# How long the loop waits before going on after an unexpected failure of its own.
_LOOP_FAILURE_PAUSE = 1.0
_SHARED_POLL = 2.0  # with a shared store, how often to look for webhooks due


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard to try, and how many deliveries at once. The defaults match the hosted
    platform: 10 attempts over about two hours (15 s, 30 s, 1 min, ... 64 min apart), 15 s
    each."""

    max_attempts: int = 10
    base_delay: float = 15.0
    timeout: float = 15.0
    concurrency: int = 32

    @property
    def lease_seconds(self) -> float:
        """How long a claimed delivery is this gateway's: past it (the gateway died during
        the attempt) another gateway makes the attempt again."""
        return self.timeout + 30.0

    def next_attempt_at(self, tries: int, now: float) -> float | None:
        """When to try again after ``tries`` failed tries; None: give up."""
        if tries >= self.max_attempts:
            return None
        return now + self.base_delay * 2 ** (tries - 1)


class WebhookDelivery:
    """The worker, run as one of the server's services."""

    def __init__(self, store: Store, legacy_keys_dir: Path, policy: DeliveryPolicy,
                 network: NetworkPolicy):
        self.store = store
        self.legacy_keys_dir = legacy_keys_dir  # where release 0.1 kept the signing keys
        self._keys: KeyRing | None = None
        self.policy = policy
        self.network = network
        self._wakeup = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def keys(self) -> KeyRing:
        """The signing keys (the store's), once started."""
        if self._keys is None:
            raise RuntimeError("webhook delivery has not started")
        return self._keys

    async def start(self) -> None:
        self._keys = await KeyRing.open(self.store, self.legacy_keys_dir)
        if not self.store.shared:
            # This process owns the store: deliveries the last one had under way were cut
            # short (with a shared store, their leases lapse instead).
            recovered = await self.store.release_webhook_leases()
            if recovered:
                log.info("retrying %d webhook deliveries interrupted by the last stop",
                         recovered)
        # No proxies from the environment: the connection goes to the address checked.
        self._client = httpx.AsyncClient(timeout=self.policy.timeout, follow_redirects=False,
                                         trust_env=False)
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop at once; attempts cut short are retried at the next start."""
        tasks = [*self._deliveries, *([self._loop] if self._loop else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def wake(self) -> None:
        """A webhook was queued: look for due ones now rather than at the next due time."""
        self._wakeup.set()

    async def redeliver(self, request_id: str) -> bool:
        """Deliver a request's webhook again now, with a fresh set of tries; False while an
        attempt is under way."""
        accepted = await self.store.redeliver_webhook(request_id, time.time())
        if accepted:
            self.wake()
        return accepted

    # The loop
    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self._claim_due()
                await self._sleep_until_due()
            except Exception:
                log.exception("webhook delivery loop failed; going on")
                await asyncio.sleep(_LOOP_FAILURE_PAUSE)

    async def _claim_due(self) -> None:
        free = self.policy.concurrency - len(self._deliveries)
        if free > 0:
            for webhook in await self.store.claim_due_webhooks(
                    time.time(), free, self.policy.lease_seconds):
                self._spawn(self._deliver(webhook))

    async def _sleep_until_due(self) -> None:
        """Until woken, or until the next webhook is due if there is a free slot for it (a
        delivery that ends wakes the loop)."""
        timeout: float | None = None
        if len(self._deliveries) < self.policy.concurrency:
            due = await self.store.next_webhook_due()
            timeout = None if due is None else max(0.0, due - time.time())
            if self.store.shared:
                # Other gateways queue webhooks too, and only wake their own loops.
                timeout = min(timeout if timeout is not None else _SHARED_POLL, _SHARED_POLL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    # One attempt
    async def _deliver(self, webhook: WebhookRecord) -> None:
        started = time.time()
        record: RequestRecord | None = None
        try:
            record = await self.store.get_request(webhook.request_id)
            status, error = await self._post(webhook, record)
        except Exception as exc:
            # Never leave a webhook claimed by an attempt that nobody will end.
            log.exception("webhook of %s: attempt %d broke", webhook.request_id,
                          webhook.attempts)
            status, error = None, f"internal error: {exc!r}"
        finished = time.time()
        attempt = WebhookAttempt(webhook.attempts, started, finished, status, error,
                                 finished - started)
        if error is None:
            state, next_at = "delivered", None
            log.info("webhook of %s delivered (attempt %d)", webhook.request_id,
                     webhook.attempts)
        else:
            next_at = self.policy.next_attempt_at(webhook.tries, finished)
            state = "failed" if next_at is None else "pending"
            log.warning("webhook of %s: attempt %d failed (%s)%s", webhook.request_id,
                        webhook.attempts, error, "; giving up" if next_at is None else "")
        await self.store.end_webhook_attempt(webhook.request_id, attempt, state, next_at)
        if state == "delivered" and record is not None and record.io_dropped_once_delivered:
            await self.store.drop_payloads(record.id)
        self.wake()

    async def _post(self, webhook: WebhookRecord,
                    record: RequestRecord | None) -> tuple[int | None, str | None]:
        """POST the signed payload of ``record``'s result once: (HTTP status, error); no
        error means delivered.

        The target's address is checked again now, and the connection made to the address
        checked; redirects are not followed (a 3xx is a failed attempt).
        """
        if record is None or record.result_status is None:
            return None, "the request no longer exists"
        body = webhook_body(webhook.request_id, webhook.gateway_request_id,
                            record.result_status, record.result_body or b"")
        headers = signed_headers(await self.keys.current(), webhook.request_id, webhook.user_id,
                                 int(time.time()), body)
        assert self._client is not None
        try:
            async with asyncio.timeout(self.policy.timeout):
                request = await asyncio.to_thread(
                    pinned_request, self._client, "POST", webhook.url, self.network,
                    content=body, headers=headers)
                response = await self._client.send(request, stream=True)
                await response.aclose()
        except FetchError as exc:
            return None, str(exc)
        except (TimeoutError, httpx.TimeoutException):
            return None, f"timed out after {self.policy.timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        status = response.status_code
        return status, None if 200 <= status < 300 else f"answered HTTP {status}"
