"""``fal.exceptions``: the SDK's error types, each one openfal's own so the runner answers
them the same way (``AppException`` → ``{"detail": message}`` with its status,
``FieldException`` → a pydantic-style 422 at ``body.<field>``, a cancelled request → 499)."""

from __future__ import annotations

from openfal.app import errors


class FalServerlessException(Exception):
    """Base of the SDK's exceptions."""


class AppException(errors.AppException, FalServerlessException):
    def __init__(self, message: str, status_code: int):
        super().__init__(message, status_code)


class FieldException(errors.FieldException, FalServerlessException):
    def __init__(self, field: str, message: str, status_code: int = 422,
                 type: str = "value_error", billable_units: int | float | str | None = 0):
        super().__init__(field, message, status_code, type)
        self.billable_units = billable_units
        self.headers = ({} if billable_units is None
                        else {"x-fal-billable-units": f"{float(billable_units):g}"})

    def to_pydantic_format(self) -> dict[str, list[dict]]:
        return self.to_body()


class RequestCancelledException(errors.RequestCancelled, FalServerlessException):
    def __init__(self, message: str = "Request cancelled by the client."):
        super().__init__(message)
        self.message = message


class FileTooLargeError(FalServerlessException):
    def __init__(self, message: str = "File is too large."):
        super().__init__(message)
        self.message = message


__all__ = ["AppException", "FalServerlessException", "FieldException", "FileTooLargeError",
           "RequestCancelledException"]
