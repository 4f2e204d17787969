"""The per-request context an endpoint runs in, and the calls that report through it.

The runner sets the context before calling an endpoint; it travels with the request into
worker threads (``asyncio.to_thread`` copies context variables), so ``print``, ``logging``
and :func:`progress` from any depth of the endpoint's code land on the right request, even
with several requests multiplexed on one runner.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from openfal.app.errors import RequestCancelled

Emit = Callable[[dict], None]


@dataclass
class RequestContext:
    request_id: str
    endpoint: str
    headers: Mapping[str, str]
    emit: Emit = field(repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise RequestCancelled(self.request_id)

    def log(self, message: str, level: str = "INFO", source: str = "user") -> None:
        self.emit({"t": "log", "id": self.request_id, "message": message, "level": level,
                   "source": source})

    def progress(self, step: int, total: int, message: str | None = None) -> None:
        self.raise_if_cancelled()
        self.emit({"t": "progress", "id": self.request_id, "step": step, "total": total,
                   "message": message})


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "openfal_request", default=None
)


def current_request() -> RequestContext | None:
    return _current.get()


def set_current_request(ctx: RequestContext | None) -> contextvars.Token:
    return _current.set(ctx)


def progress(step: int, total: int, message: str | None = None) -> None:
    """Report that the current request finished ``step`` of ``total`` steps.

    Also the cooperative cancellation point: raises :class:`RequestCancelled` once the
    request has been cancelled. Outside a request it does nothing.
    """
    ctx = _current.get()
    if ctx is not None:
        ctx.progress(step, total, message)
