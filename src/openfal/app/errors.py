"""Exceptions an app raises to shape the response its caller sees."""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import ValidationError


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


class ModelUnavailable(AppException):
    """The model's weights (or its runtime) are not on this machine: a 503 that no retry on
    another runner would fix, so it is not retried (``X-Fal-Needs-Retry: 0``)."""

    def __init__(self, message: str):
        super().__init__(message, 503, "model_unavailable", {"x-fal-needs-retry": "0"})


class RequestCancelled(Exception):
    """Raised inside an endpoint once its request has been cancelled."""


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as JSON-safe ``detail`` items located in the request body."""
    try:
        raw = exc.json(include_url=False)
    except ValueError:
        # A body that is not UTF-8 cannot be echoed back as the error's input.
        raw = exc.json(include_url=False, include_input=False)
    items = pydantic_core.from_json(raw)
    for item in items:
        item["loc"] = ["body", *item.get("loc", [])]
    return items
