"""Exceptions an app raises to shape the response its caller sees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydantic_core
from pydantic import ValidationError

# What a 422 repeats of the input: the first errors, each echoing a bounded excerpt.
MAX_DETAIL_ITEMS = 50
MAX_ECHO_CHARS = 200
MAX_ECHO_ENTRIES = 10


class AppException(Exception):
    """Ends the request with ``status_code`` and ``{"detail": message}``.

    A 503 tells the platform the runner is unhealthy: it is replaced and the request retried.
    """

    def __init__(self, message: str, status_code: int = 400, error_type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.message}
        if self.error_type:
            body["error_type"] = self.error_type
        return body


class FieldException(AppException):
    """A problem with one input field, reported as a pydantic-style 422 ``detail`` item.

    ``field`` is a dotted name (``"image.url"``) or a location list (``["images", 0]``).
    """

    def __init__(
        self,
        field: str | list[str | int],
        message: str,
        status_code: int = 422,
        type: str = "value_error",
    ):
        super().__init__(message, status_code)
        self.field = field
        self.type = type

    def to_body(self) -> dict[str, Any]:
        path = self.field.split(".") if isinstance(self.field, str) else self.field
        loc = ["body", *path]
        return {"detail": [{"loc": loc, "msg": self.message, "type": self.type}]}


class FieldErrors(AppException):
    """Ends the request with a pydantic-style ``detail`` list as it is, such as the 422 of
    another server a request was passed on to (each item keeps its ``loc``)."""

    def __init__(self, detail: list[dict[str, Any]], status_code: int = 422,
                 headers: dict[str, str] | None = None):
        super().__init__(f"{len(detail)} field error(s)", status_code, headers=headers)
        self.detail = detail

    def to_body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class ModelUnavailable(AppException):
    """The model's weights (or its runtime) are not on this machine: a 503 that no retry on
    another runner would fix, so it is not retried (``X-Fal-Needs-Retry: 0``)."""

    def __init__(self, message: str):
        super().__init__(message, 503, "model_unavailable", {"x-fal-needs-retry": "0"})


class RequestCancelled(Exception):
    """Raised inside an endpoint once its request has been cancelled."""


def validation_detail(exc: ValidationError, location: Sequence[str | int] = ("body",)
                      ) -> list[dict[str, Any]]:
    """Pydantic errors as JSON-safe ``detail`` items located under ``location``.

    What they repeat of the input is bounded: at most :data:`MAX_DETAIL_ITEMS` items, and
    long strings and large containers cut down (see :func:`_echo`), so a huge input cannot
    make a huge error body.
    """
    try:
        raw = exc.json(include_url=False)
    except ValueError:
        # A body that is not UTF-8 cannot be echoed back as the error's input.
        raw = exc.json(include_url=False, include_input=False)
    items = pydantic_core.from_json(raw)
    detail = [_bounded_item(item, location) for item in items[:MAX_DETAIL_ITEMS]]
    if len(items) > MAX_DETAIL_ITEMS:
        detail.append({"loc": list(location), "type": "too_many_errors",
                       "msg": f"{len(items) - MAX_DETAIL_ITEMS} more errors not shown"})
    return detail


def _bounded_item(item: dict[str, Any], location: Sequence[str | int]) -> dict[str, Any]:
    bounded = {key: _echo(value) for key, value in item.items() if key != "loc"}
    # Every step of the location stays; only a long key in it (from the input) is cut.
    return {"loc": [*location, *(_cut(step, 0) for step in item.get("loc", []))], **bounded}


def _echo(value: Any) -> Any:
    """``value`` as is when its JSON is short, else cut down: the start of a string, the
    first entries of a container with its nested containers summarised."""
    if len(pydantic_core.to_json(value)) <= MAX_ECHO_CHARS:
        return value
    return _cut(value, depth=1)


def _cut(value: Any, depth: int) -> Any:
    if isinstance(value, list):
        if depth == 0:
            return f"[{len(value)} items]"
        shown: list[Any] = [_cut(item, depth - 1) for item in value[:MAX_ECHO_ENTRIES]]
        if len(value) > MAX_ECHO_ENTRIES:
            shown.append(f"... {len(value) - MAX_ECHO_ENTRIES} more items")
        return shown
    if isinstance(value, dict):
        if depth == 0:
            return f"{{{len(value)} keys}}"
        entries = list(value.items())
        cut = {_cut(key, 0): _cut(item, depth - 1) for key, item in entries[:MAX_ECHO_ENTRIES]}
        if len(entries) > MAX_ECHO_ENTRIES:
            cut["..."] = f"{len(entries) - MAX_ECHO_ENTRIES} more keys"
        return cut
    text = value if isinstance(value, str) else pydantic_core.to_json(value).decode()
    if len(text) <= MAX_ECHO_CHARS:
        return value
    return f"{text[:MAX_ECHO_CHARS]}... ({len(text) - MAX_ECHO_CHARS} more characters)"
