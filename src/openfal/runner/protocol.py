"""The typed messages of openfal's work channels.

A runner process and its worker talk over one stream socket (a socketpair made at spawn
time); a remote worker and a gateway carry the same messages in HTTP bodies. Each message
is a dataclass, sent as a msgpack array ``[tag, *fields]``; on the socket each frame has a
4-byte big-endian length in front.

worker -> runner: :class:`Run`, :class:`Cancel`, :class:`Stop`.
runner -> worker: :class:`Ready` or :class:`SetupFailed` once, then per request
:class:`Log`, :class:`Progress`, :class:`Partial`, :class:`SavedState` and one
:class:`Result`.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 30


@dataclass
class Run:
    id: str
    path: str
    endpoint_id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    encoding: str = "json"
    state: dict[str, Any] | None = None
    tag: ClassVar[str] = "run"


@dataclass
class Cancel:
    id: str
    tag: ClassVar[str] = "cancel"


@dataclass
class Stop:
    tag: ClassVar[str] = "stop"


@dataclass
class Ready:
    hints: list[str]
    pid: int
    # The library modules it imported by the end of setup(), in import order: the runner
    # template of its environment imports them too, for the runners forked after it.
    modules: list[str] = field(default_factory=list)
    tag: ClassVar[str] = "ready"


@dataclass
class SetupFailed:
    """``status`` and ``body``: the answer the app gave as its reason (missing weights,
    say); without them the failure was unexpected and ``error`` is a short reason."""

    error: str
    status: int | None = None
    body: bytes | None = None
    tag: ClassVar[str] = "setup_failed"


@dataclass
class Log:
    id: str
    message: str
    level: str = "INFO"
    source: str = "USER"
    tag: ClassVar[str] = "log"


@dataclass
class Progress:
    id: str
    step: int
    total: int
    message: str | None = None
    tag: ClassVar[str] = "progress"


@dataclass
class Partial:
    id: str
    body: bytes
    tag: ClassVar[str] = "partial"


@dataclass
class SavedState:
    id: str
    state: dict[str, Any]
    tag: ClassVar[str] = "state"


@dataclass
class Result:
    id: str
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)
    tag: ClassVar[str] = "result"


Message = Run | Cancel | Stop | Ready | SetupFailed | Log | Progress | Partial | SavedState | Result
RequestMessage = Log | Progress | Partial | SavedState | Result  # what a request produces
_BY_TAG: dict[str, type[Message]] = {
    cls.tag: cls for cls in (Run, Cancel, Stop, Ready, SetupFailed, Log, Progress, Partial,
                             SavedState, Result)}


def pack(message: Message) -> list[Any]:
    # Not dataclasses.astuple: it deep-copies every field (bodies, headers) on each message.
    return [message.tag, *(getattr(message, f.name) for f in fields(message))]


def unpack(item: list[Any]) -> Message:
    tag, *values = item
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise ValueError(f"unknown message {tag!r}")
    return cls(*values)


def encode(message: Message) -> bytes:
    payload = msgpack.packb(pack(message), use_bin_type=True)
    return _HEADER.pack(len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None when the peer has closed the channel."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise ValueError(f"control message of {size} bytes")
        payload = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return unpack(msgpack.unpackb(payload, raw=False))
