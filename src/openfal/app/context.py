"""The per-request context an endpoint runs in, and the calls that report through it.

The runner sets the context before calling an endpoint; it travels with the request into
worker threads (``asyncio.to_thread`` copies context variables), so ``print``, ``logging``
and :func:`progress` from any depth of the endpoint's code land on the right request, even
with several requests multiplexed on one runner.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from openfal.app.encoding import Encoding, encode_output
from openfal.app.errors import RequestCancelled
from openfal.files.lifecycle import InvalidLifecycle, requested_lifecycle
from openfal.runner.protocol import Log, Partial, Progress, RequestMessage, SavedState

Emit = Callable[[RequestMessage], None]

# Progress is sent at most this often (the last step always): a diffusion step can take a
# few milliseconds, and each report wakes the runner's loop, the server and every status
# stream, which on a busy machine takes CPU from the steps themselves.
PROGRESS_INTERVAL_SECONDS = 0.05


@dataclass
class RequestContext:
    request_id: str
    endpoint: str
    headers: Mapping[str, str]
    emit: Emit = field(repr=False)
    # Set from the input's ``sync_mode`` field: media outputs are inlined, not stored.
    sync_mode: bool = False
    # Whether the caller streams partial results (``/stream``): worth making previews.
    streaming: bool = False
    # What the request costs in the app's own unit (images, megapixels, seconds of video):
    # set it and the usage ledger records it (``x-fal-billable-units``).
    billable_units: float | None = None
    # How request and result bodies are encoded: "json", or "msgpack" for realtime.
    encoding: Encoding = "json"
    # What an earlier attempt of this request saved with ``save_state`` (None: nothing).
    saved_state: dict[str, Any] | None = None
    # The full endpoint id it was called as ("owner/app/sub/path").
    endpoint_id: str = ""
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _progress_sent_at: float = field(default=float("-inf"), repr=False)

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise RequestCancelled(self.request_id)

    def log(self, message: str, level: str = "INFO", source: str = "USER") -> None:
        self.emit(Log(self.request_id, message, level, source))

    def progress(self, step: int, total: int, message: str | None = None) -> None:
        self.raise_if_cancelled()
        now = time.monotonic()
        if step < total and message is None and (
                now - self._progress_sent_at < PROGRESS_INTERVAL_SECONDS):
            return  # a newer step comes soon, and the last one is always sent
        self._progress_sent_at = now
        self.emit(Progress(self.request_id, step, total, message))

    def partial(self, result: Any) -> None:
        self.raise_if_cancelled()
        self.emit(Partial(self.request_id, encode_output(result, self.encoding)))

    def save_state(self, state: dict[str, Any]) -> None:
        """Keep ``state`` (JSON-able) with the request in the platform's store. If this
        attempt is lost (its runner or the server dies) the next attempt starts with it in
        ``saved_state``: work handed to another system (an upstream job id) is resumed rather
        than started again. The store commits it within milliseconds; a crash in that window
        loses it."""
        self.saved_state = state
        self.emit(SavedState(self.request_id, state))

    @property
    def lifecycle_seconds(self) -> float | Literal["default"] | None:
        """Output lifetime the caller asked for in ``X-Fal-Object-Lifecycle-Preference``:
        seconds, None for never, or "default" when it did not say."""
        try:
            preference = requested_lifecycle(self.headers)
        except InvalidLifecycle:
            # The gateway refuses such requests; one that got here anyway gets the default.
            return "default"
        return "default" if preference is None else preference.ttl_seconds("default")


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "openfal_request", default=None
)


def current_request() -> RequestContext | None:
    return _current.get()


def set_current_request(ctx: RequestContext | None) -> contextvars.Token:
    return _current.set(ctx)


def progress(step: int, total: int, message: str | None = None) -> None:
    """Report that the current request finished ``step`` of ``total`` steps.

    Reports are sent at most every ``PROGRESS_INTERVAL_SECONDS`` (50 ms); the last step, and
    a report with a ``message``, are always sent.

    Also the cooperative cancellation point: raises :class:`RequestCancelled` once the
    request has been cancelled. Outside a request it does nothing.
    """
    ctx = _current.get()
    if ctx is not None:
        ctx.progress(step, total, message)


def partial(result: Any) -> None:
    """Send a partial result of the current request (streamed to ``/stream`` callers and to
    status streams). Outside a request it does nothing."""
    ctx = _current.get()
    if ctx is not None:
        ctx.partial(result)
