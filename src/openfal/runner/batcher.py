"""The runner's side of dynamic batching (see :mod:`openfal.app.batching`): requests of a
batched endpoint wait here, grouped by key, until their group is full or its window has
passed, then are served by one call of the endpoint. A ready group stays open until its call
begins: while another batch runs, requests keep joining it (up to ``max_size``), so under
load batches fill without any window at all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from openfal.app.batching import Batch, BatchContext, delivery_key
from openfal.app.context import RequestContext, set_current_request
from openfal.app.errors import RequestCancelled

log = logging.getLogger(__name__)

# Calls the endpoint with a list of inputs, under the current request's context.
BatchCall = Callable[[list[Any]], Awaitable[list[Any]]]


@dataclass(eq=False)
class _Waiting:
    ctx: RequestContext
    input: Any
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """One batched endpoint of a runner. ``lock`` is shared by the runner's batchers: one
    batch runs at a time. ``flushed`` is called with each batch as it ends (the runner
    flushes the batch's captured output)."""

    def __init__(self, config: Batch, call: BatchCall, lock: asyncio.Lock,
                 flushed: Callable[[BatchContext], None]):
        self.config = config
        self.call = call
        self.lock = lock
        self.flushed = flushed
        self.groups: dict[Hashable, list[_Waiting]] = {}  # open: requests still join
        self.starting: set[Hashable] = set()  # groups ready, waiting for the running batch
        self.running: dict[str, _Waiting] = {}  # by request id
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, ctx: RequestContext, input: Any) -> Any:
        """The output of ``input``'s request, once its batch has run."""
        waiting = _Waiting(ctx, input)
        key = self._group_key(ctx, input)
        group = self.groups.setdefault(key, [])
        group.append(waiting)
        if len(group) >= self.config.max_size:
            self._start(key)
        elif len(group) == 1:
            asyncio.get_running_loop().call_later(self.config.wait_seconds, self._start, key)
        return await waiting.future

    def cancel(self, request_id: str) -> None:
        """The request is cancelled: it leaves its group, or its output will be dropped;
        either way it is answered now."""
        for key, group in list(self.groups.items()):
            for waiting in group:
                if waiting.ctx.request_id == request_id:
                    group.remove(waiting)
                    if not group:
                        del self.groups[key]
                    _resolve(waiting, RequestCancelled(request_id))
                    return
        if (waiting := self.running.get(request_id)) is not None:
            _resolve(waiting, RequestCancelled(request_id))

    def _group_key(self, ctx: RequestContext, input: Any) -> Hashable:
        if ctx.streaming:
            return "alone", ctx.request_id
        app_key = self.config.key(input) if self.config.key is not None else None
        return app_key, delivery_key(ctx)

    def _start(self, key: Hashable) -> None:
        """The group of ``key`` is ready (full, or its window passed): it runs as soon as no
        other batch does, with whoever joined it by then."""
        if key in self.groups and key not in self.starting:
            self.starting.add(key)
            task = asyncio.get_running_loop().create_task(self._run(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable) -> None:
        async with self.lock:
            self.starting.discard(key)
            group = self.groups.pop(key, [])
            batch, rest = group[:self.config.max_size], group[self.config.max_size:]
            if rest:  # they have waited their window already
                self.groups[key] = rest
                self._start(key)
            if not batch:
                return
            for waiting in batch:
                self.running[waiting.ctx.request_id] = waiting
            try:
                await self._serve(batch)
            finally:
                for waiting in batch:
                    self.running.pop(waiting.ctx.request_id, None)

    async def _serve(self, batch: list[_Waiting]) -> None:
        try:
            outputs = await self._call(batch)
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, RequestCancelled):
                for waiting in batch:
                    _resolve(waiting, exc)
                return
            # Which input broke the call is not known: each runs again alone.
            log.warning("a batch of %d failed (%r); running each request alone", len(batch),
                        exc)
            for waiting in batch:
                if not waiting.future.done():
                    await self._serve([waiting])
            return
        for waiting, output in zip(batch, outputs, strict=True):
            _resolve(waiting, output)

    async def _call(self, batch: list[_Waiting]) -> list[Any]:
        ctx = BatchContext.of([waiting.ctx for waiting in batch])
        if len(batch) > 1:
            for waiting in batch:
                waiting.ctx.log(f"served in one call with {len(batch) - 1} other requests",
                                source="SYSTEM")
        set_current_request(ctx)
        try:
            outputs = await self.call([waiting.input for waiting in batch])
        finally:
            self.flushed(ctx)
        if not isinstance(outputs, list) or len(outputs) != len(batch):
            got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
            raise TypeError(f"a batched endpoint returns a list with one output per input: "
                            f"got {got} for {len(batch)} inputs")
        return outputs


def _resolve(waiting: _Waiting, outcome: Any) -> None:
    """Answer the request (an exception fails it), unless it was answered already."""
    if waiting.future.done():
        return
    if isinstance(outcome, BaseException):
        waiting.future.set_exception(outcome)
    else:
        waiting.future.set_result(outcome)
