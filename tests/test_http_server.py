"""The HTTP server sends a response's head and body in one write (uvicorn writes them
apart), and never holds back a head whose body is not coming at once."""

from __future__ import annotations

import asyncio

from openfal.net.http_server import _CoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_a_head_goes_out_with_its_body() -> None:
    sent = RecordingTransport()
    transport = _CoalescingTransport(sent, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.write(b"{}")
    assert sent.writes == [HEAD + b"{}"]
    await asyncio.sleep(0)  # the held head's flush, cancelled, sends nothing more
    assert sent.writes == [HEAD + b"{}"]


async def test_a_head_alone_goes_out_on_the_next_turn_and_before_a_close() -> None:
    sent = RecordingTransport()
    transport = _CoalescingTransport(sent, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)  # a streamed response: its chunks come later
    assert sent.writes == []
    await asyncio.sleep(0)
    assert sent.writes == [HEAD]
    transport.write(b"data: 1\n\n")
    assert sent.writes == [HEAD, b"data: 1\n\n"]

    transport.write(HEAD)
    transport.close()
    assert sent.writes[-1] == HEAD and sent.closed
    assert transport.is_closing()  # other calls reach the real transport
