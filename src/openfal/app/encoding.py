"""Request and result bodies as JSON (HTTP) or msgpack (realtime websockets).

msgpack keeps ``bytes`` as bytes, which is what realtime apps exchanging image frames need.
"""

from __future__ import annotations

from typing import Any, Literal

import msgpack
import pydantic_core
from pydantic import BaseModel

Encoding = Literal["json", "msgpack"]


def decode_input(model: type[BaseModel], body: bytes, encoding: Encoding) -> BaseModel:
    if encoding == "msgpack":
        return model.model_validate(msgpack.unpackb(body, raw=False))
    return model.model_validate_json(body)


def encode_output(value: Any, encoding: Encoding) -> bytes:
    if encoding == "msgpack":
        return msgpack.packb(_plain(value), use_bin_type=True, default=_plain)
    return pydantic_core.to_json(value)


def _plain(value: Any) -> Any:
    """``value`` as types msgpack knows, keeping bytes."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python")
    if isinstance(value, dict | list | str | int | float | bool | bytes) or value is None:
        return value
    return pydantic_core.to_jsonable_python(value)
