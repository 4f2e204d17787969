"""What gateways tell each other through the store's notification channel.

The store's rows are the truth; an event is only a hint that something changed, sent to
the other processes using the same store (``LISTEN/NOTIFY`` for PostgreSQL; none for
SQLite, which one process owns). A process acts on its own changes directly and hears
only the others'. A lost event delays a reader (who also polls) but loses nothing. Events
are small typed values that serialise to msgpack, so they cross processes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, Protocol

import msgpack


@dataclass(frozen=True)
class WorkAdded:
    """A request for this endpoint is waiting to be claimed."""

    endpoint_id: str
    tag: ClassVar[str] = "work"


@dataclass(frozen=True)
class RequestChanged:
    """A request's status, logs or outcome changed: readers look again."""

    request_id: str
    tag: ClassVar[str] = "changed"


@dataclass(frozen=True)
class Progressed:
    request_id: str
    step: int
    total: int
    message: str | None
    tag: ClassVar[str] = "progress"


@dataclass(frozen=True)
class PartialProduced:
    """A partial result; ``body`` is its JSON (or msgpack for realtime) encoding."""

    request_id: str
    body: bytes
    tag: ClassVar[str] = "partial"


@dataclass(frozen=True)
class CancelRequested:
    """A caller asked to cancel a running request: its worker stops it."""

    request_id: str
    tag: ClassVar[str] = "cancel"


Event = WorkAdded | RequestChanged | Progressed | PartialProduced | CancelRequested
_BY_TAG: dict[str, type[Event]] = {cls.tag: cls for cls in
                                   (WorkAdded, RequestChanged, Progressed, PartialProduced,
                                    CancelRequested)}


def encode_event(event: Event) -> bytes:
    return msgpack.packb([event.tag, *(getattr(event, f.name) for f in fields(event))],
                         use_bin_type=True)


def decode_event(data: bytes) -> Event:
    tag, *values = msgpack.unpackb(data, raw=False)
    return _BY_TAG[tag](*values)


Listener = Callable[[Event], None]


class Notifier(Protocol):
    def publish(self, event: Event) -> None:
        """Tell the other processes using the store (not this one)."""
        ...

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event other processes publish from now on;
        returns what stops it."""
        ...


class SingleProcessNotifier:
    """The embedded store's channel: one process owns the store, so there is nobody to
    tell and nobody to hear from."""

    def publish(self, event: Event) -> None:
        pass

    def listen(self, listener: Listener) -> Callable[[], None]:
        return lambda: None

