"""The HTTP server under the gateway: uvicorn, with limits for hostile clients and a
graceful shutdown that drains the platform first.

uvicorn bounds neither how long a client may take to send its headers nor how large they
may be, so a few hundred half-sent requests hold connections open indefinitely and a 1 MB
header is read whole. :class:`GuardedHttpProtocol` adds both limits to uvicorn's httptools
protocol: headers late past the timeout get a 408, oversized ones a 431, and the connection
is closed.

:class:`DrainingServer` changes what a signal does. The first SIGTERM or SIGINT drains the
platform (no new work; running requests get the grace period; the rest is handed back), and
only then does uvicorn close its listener and connections. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("openfal")

class _Refused(Exception):
    pass


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def guarded_protocol(header_timeout: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with these header limits."""

    class Guarded(GuardedHttpProtocol):
        pass

    Guarded.header_timeout = header_timeout
    Guarded.max_header_bytes = max_header_bytes
    return Guarded


class GuardedHttpProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if not self._refused:
            super().send_400_response(msg)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._refuse(431, f"request headers larger than {self.max_header_bytes} bytes")
            raise _Refused()  # stops the parser; uvicorn's own 400 is then skipped

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its headers came in time
        if not self.transport.is_closing():
            self._refuse(408, f"request headers not received within {self.header_timeout:g}s")

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        log.info("refused a connection from %s: %s", _peer(self.client), message)
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s"
            % (status, _REASONS[status], len(body), body))
        self.transport.close()
        self._disarm_header_timer()


class _CoalescingTransport:
    """A transport that sends a response's head with its body: uvicorn writes them
    separately (two system calls, two TCP segments per response). A write that ends a
    head is held until the next write, which takes it along, or until the event loop's
    next turn (a streamed body, or none)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush_later: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._cancel_flush()
            self._transport.write(head + data)
        elif data.endswith(b"\r\n\r\n"):
            self._head = data
            self._flush_later = self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        self._flush_later = None
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def _cancel_flush(self) -> None:
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None

    def close(self) -> None:
        self._cancel_flush()
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._cancel_flush()
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


class DrainingServer(uvicorn.Server):
    """uvicorn, whose first signal drains the platform (``drain``) before it stops."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]):
        super().__init__(config)
        self._drain = drain
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None or self.should_exit:
            log.warning("second signal: stopping now")
            self.force_exit = self.should_exit = True
            return
        # Runs in the event loop's thread (a Python signal handler), between callbacks.
        self._draining = asyncio.get_event_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("draining failed; stopping")
        self.should_exit = True
