"""The object lifecycle preference: how long a stored file lives, as the clients ask.

Runs and submits send ``X-Fal-Object-Lifecycle-Preference`` (it governs the outputs);
uploads send it too, or ``X-Fal-Object-Lifecycle`` (the JS client's upload flow). Either
carries JSON like ``{"expiration_duration_seconds": 3600, "initial_acl": {...}}``:

* ``expiration_duration_seconds``: a whole number of seconds from 0 to 100 years, or null
  for never; absent, the server's default applies. 0 means the file expires at once: it is
  never served, and is deleted at the next collection.
* ``initial_acl``: accepted in the shape the hosted platform documents, and ignored, since
  every stored file is public.

The gateway validates the header once, when the request arrives (a 422 otherwise); the
runner reads the same header again and can trust it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, StrictInt, StringConstraints, TypeAdapter, ValidationError

from openfal.app.errors import validation_detail

PREFERENCE_HEADER = "x-fal-object-lifecycle-preference"
UPLOAD_HEADER = "x-fal-object-lifecycle"
UPLOAD_HEADERS = (PREFERENCE_HEADER, UPLOAD_HEADER)
MAX_EXPIRATION_SECONDS = 100 * 365 * 24 * 3600
# Room for the largest valid preference (16 rules of 128 escaped characters), and no more:
# the JSON is parsed only once its size is known to be bounded.
MAX_HEADER_CHARS = 32 * 1024

D = TypeVar("D")
AclDecision = Literal["allow", "hide", "forbid"]
_BoundedHeader = TypeAdapter(Annotated[str, StringConstraints(max_length=MAX_HEADER_CHARS)])


def _no_default(schema: dict[str, Any]) -> None:
    """An absent duration is the server's default, not the null that never expires."""
    schema.pop("default", None)


class AclRule(BaseModel):
    user: str = Field(max_length=128)
    decision: AclDecision


class InitialAcl(BaseModel):
    default: AclDecision | None = None
    rules: list[AclRule] = Field(default_factory=list, max_length=16)


class LifecyclePreference(BaseModel):
    expiration_duration_seconds: Annotated[
        StrictInt, Field(ge=0, le=MAX_EXPIRATION_SECONDS)] | None = Field(
        default=None, json_schema_extra=_no_default,
        description="Seconds until the file expires (0: at once, never served); null: "
                    "never; absent: the server's default.")
    initial_acl: InitialAcl | None = Field(
        default=None, description="Accepted and ignored: stored files are public.")

    def ttl_seconds(self, default: D) -> int | D | None:
        """Seconds the file lives: None for never, ``default`` when the caller did not say."""
        if "expiration_duration_seconds" not in self.model_fields_set:
            return default
        return self.expiration_duration_seconds


class InvalidLifecycle(ValueError):
    """A lifecycle header that is not a valid preference; ``detail`` holds the 422's items,
    located at ``["header", <name>, ...]``."""

    def __init__(self, header: str, error: ValidationError):
        super().__init__(f"invalid {header} header")
        self.detail = validation_detail(error, ["header", header])


def requested_lifecycle(headers: Mapping[str, str],
                        names: Sequence[str] = (PREFERENCE_HEADER,)
                        ) -> LifecyclePreference | None:
    """The preference in the first of the ``names`` headers sent; None if none is.

    Raises :class:`InvalidLifecycle` for a value that is too long, not JSON, nested too
    deep (pydantic's parser stops at its recursion limit), or not the documented shape.
    """
    for name in names:
        raw = headers.get(name)
        if raw is not None:
            try:
                _BoundedHeader.validate_python(raw)
                return LifecyclePreference.model_validate_json(raw)
            except ValidationError as exc:
                raise InvalidLifecycle(name, exc) from None
    return None
