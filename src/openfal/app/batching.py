"""Dynamic batching: an endpoint that serves several waiting requests in one call.

An app declares it on the endpoint::

    @openfal.endpoint("/", batch=openfal.Batch(max_size=4, wait_seconds=0.01,
                                               key=lambda input: input.image_size))
    def run(self, inputs: list[Input]) -> list[Output]: ...

The runner groups requests whose ``key`` (a function of the input) is equal, and whose
delivery is alike (streaming, ``sync_mode``, encoding, output lifetime), into one call of up
to ``max_size`` inputs, waiting at most ``wait_seconds`` after the first for more to come
(the worker sends a runner as many requests at once as its ``max_multiplexing``, which must
be at least ``max_size``; twice that lets the next batch gather while one runs). A group
stays open until its call begins, so while another batch runs, requests keep joining it:
under load batches fill by themselves, and ``wait_seconds`` only matters when the runner is
idle (0 never delays a lone request).

Each request keeps its own id, logs, result and cancel: the call gets one input per request
and returns one output per input, in order, where an output may be an exception that fails
its request alone (annotate the return as ``list[Output]``: the schema is that of one
output). If the call itself raises, every request of the batch is run again alone, so one
bad input fails alone. Batches of a runner run one at a time (a model is shared state).
Streaming requests are never batched: their previews are their own.

Inside the call, :func:`openfal.current_request` is a :class:`BatchContext`: logs and
progress go to every request of the batch, and the batch counts as cancelled (``progress``
raises) only once all of its requests are; a request cancelled while its batch runs gets its
cancellation at once and its output is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from openfal.app.context import RequestContext
from openfal.app.errors import RequestCancelled


@dataclass(frozen=True)
class Batch:
    """How an endpoint batches: at most ``max_size`` requests whose ``key(input)`` is equal,
    collected for at most ``wait_seconds`` after the first arrives."""

    max_size: int = 4
    wait_seconds: float = 0.01
    key: Callable[[Any], Hashable] | None = None

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError("Batch.max_size must be >= 1")
        if not 0 <= self.wait_seconds <= 60:
            raise ValueError("Batch.wait_seconds must be between 0 and 60")


@dataclass
class BatchContext(RequestContext):
    """The current request of a batched call: the batch's requests as one."""

    members: Sequence[RequestContext] = field(default_factory=tuple)

    @classmethod
    def of(cls, members: Sequence[RequestContext]) -> BatchContext:
        first = members[0]
        return cls(request_id=first.request_id, endpoint=first.endpoint, headers=first.headers,
                   emit=first.emit, sync_mode=first.sync_mode, streaming=first.streaming,
                   encoding=first.encoding, endpoint_id=first.endpoint_id, members=members)

    @property
    def live(self) -> list[RequestContext]:
        return [member for member in self.members if not member.is_cancelled]

    @property
    def is_cancelled(self) -> bool:
        return not self.live

    def raise_if_cancelled(self) -> None:
        if self.is_cancelled:
            raise RequestCancelled(self.request_id)

    def log(self, message: str, level: str = "INFO", source: str = "USER") -> None:
        for member in self.live:
            member.log(message, level, source)

    def progress(self, step: int, total: int, message: str | None = None) -> None:
        self.raise_if_cancelled()
        for member in self.live:
            member.progress(step, total, message)

    def partial(self, result: Any) -> None:
        self.raise_if_cancelled()
        for member in self.live:
            member.partial(result)

    def save_state(self, state: dict[str, Any]) -> None:
        raise RuntimeError("save_state is for one request; a batched call serves several")


def delivery_key(ctx: RequestContext) -> Hashable:
    """What must match, beyond the app's key, for requests to share a call: how their
    outputs are delivered."""
    return ctx.sync_mode, ctx.encoding, ctx.lifecycle_seconds
