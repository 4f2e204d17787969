"""Apps that report which app secrets their runner was given as environment variables."""

from __future__ import annotations

import os

from pydantic import BaseModel

import openfal


class Seen(BaseModel):
    greeting: str | None  # GREETING's value
    sees_other: bool  # whether OTHER (a secret the app may not name) is set
    sees_key: bool  # whether the key that opens secrets reached the runner


def seen() -> Seen:
    return Seen(greeting=os.environ.get("GREETING"), sees_other="OTHER" in os.environ,
                sees_key="OPENFAL_SECRETS_KEY" in os.environ)


class Greeter(openfal.App):
    """Names the one secret it needs."""

    app_name = "greeter"
    secrets = ["GREETING"]

    @openfal.endpoint("/")
    def run(self) -> Seen:
        return seen()


class SeesAll(openfal.App):
    """Names no secret: it gets every one."""

    app_name = "sees-all"

    @openfal.endpoint("/")
    def run(self) -> Seen:
        return seen()


class NeedsMissing(openfal.App):
    """Names a secret nobody sets."""

    app_name = "needs-missing"
    secrets = ["NEVER_SET"]

    @openfal.endpoint("/")
    def run(self) -> Seen:
        return seen()
