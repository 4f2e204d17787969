"""The control channel between the gateway and a runner process.

One stream socket per runner (a socketpair made at spawn time). Each message is a msgpack
map behind a 4-byte big-endian length. Key ``t`` names the message:

gateway -> runner: ``run`` {id, path, endpoint_id, body, headers, stream, encoding, state},
``cancel`` {id}, ``stop`` {}
runner -> gateway: ``ready`` {hints}, ``setup_failed`` {error}, ``log`` {id, message, level,
source}, ``progress`` {id, step, total, message}, ``partial`` {id, body}, ``state`` {id,
state}, ``result`` {id, status, body, headers, hints}
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 30


def encode(message: dict[str, Any]) -> bytes:
    payload = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None when the peer has closed the channel."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise ValueError(f"control message of {size} bytes")
        payload = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return msgpack.unpackb(payload, raw=False)
