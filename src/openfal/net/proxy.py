"""An HTTP CONNECT proxy that sends the fal host names to this server.

fal-client hard-codes ``https://rest.fal.ai`` (tokens, storage) and ``https://v3.fal.media``
(uploads), and websockets tunnels ``wss://`` through a proxy too; no setting changes them.
With ``HTTPS_PROXY`` pointing here, ``CONNECT <fal host>:<any port>`` is spliced to openfal's
own TLS listener, which presents a certificate for those names and routes on the ``Host``
header. Every other ``CONNECT host:port`` is passed through to the real destination
untouched, so the rest of the process's HTTPS traffic keeps working.

Only ``CONNECT`` is served: a plain-HTTP proxy request (``GET http://host/...``) gets
``405 Method Not Allowed``. ``openfal env`` sets only ``HTTPS_PROXY``, so plain-HTTP traffic
never comes here. The proxy listens on 127.0.0.1 only: it would be an open relay elsewhere.

Each tunnel copies with a fixed buffer, so memory stays bounded whatever flows through it.
An end-of-stream on one side is passed on to the other (half-close), and the tunnel is
closed once both directions have ended.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from http import HTTPStatus

from openfal.errors import ConfigError
from openfal.net.hosts import is_platform_host

log = logging.getLogger(__name__)

PROXY_HOST = "127.0.0.1"
BUFFER = 64 * 1024  # per read; also the largest CONNECT request head accepted
HEAD_TIMEOUT = 30.0  # to send the request head after connecting
CONNECT_TIMEOUT = 10.0  # to reach the destination

Address = tuple[str, int]


class ConnectProxy:
    """The proxy on a socket bound up front, so its URL is known before the loop runs."""

    def __init__(self, sock: socket.socket, platform: Address):
        self._sock = sock
        self._platform = platform
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @classmethod
    def bind(cls, port: int, platform: Address) -> ConnectProxy:
        """Listen on 127.0.0.1:``port`` (0: any free port); fal hosts go to ``platform``."""
        try:
            sock = socket.create_server((PROXY_HOST, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen for the proxy on {PROXY_HOST}:{port} "
                              f"({exc.strerror}); choose another with --proxy-port") from None
        return cls(sock, platform)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock, limit=BUFFER)

    async def stop(self) -> None:
        """Stop listening and end every open tunnel."""
        assert self._server is not None, "stop() without start()"
        self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except OSError as exc:
            log.debug("proxy connection ended: %s", exc)
        finally:
            writer.close()
            self._connections.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        except asyncio.LimitOverrunError:
            await _respond(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request_line) != 3:
            await _respond(writer, HTTPStatus.BAD_REQUEST)
            return
        method, target, _ = request_line
        if method != "CONNECT":
            await _respond(writer, HTTPStatus.METHOD_NOT_ALLOWED, "Allow: CONNECT\r\n")
            return
        destination = parse_authority(target)
        if destination is None:
            await _respond(writer, HTTPStatus.BAD_REQUEST)
            return
        await self._tunnel(reader, writer, destination)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      destination: Address) -> None:
        address = self._platform if is_platform_host(destination[0]) else destination
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_reader, up_writer = await asyncio.open_connection(*address, limit=BUFFER)
        except TimeoutError:
            await _respond(writer, HTTPStatus.GATEWAY_TIMEOUT)
            return
        except OSError as exc:
            log.debug("proxy cannot reach %s:%d: %s", *address, exc)
            await _respond(writer, HTTPStatus.BAD_GATEWAY)
            return
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            up_writer.close()


def parse_authority(authority: str) -> Address | None:
    """``host:port`` or ``[v6]:port`` as in a CONNECT request; None when malformed."""
    host, sep, port = authority.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until end-of-stream and pass that on; a broken side ends both."""
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()


async def _respond(writer: asyncio.StreamWriter, status: HTTPStatus, headers: str = "") -> None:
    writer.write(f"HTTP/1.1 {status.value} {status.phrase}\r\n{headers}"
                 "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
