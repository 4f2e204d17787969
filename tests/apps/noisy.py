"""An app whose import and ``setup()`` make noise, and which imports a noisy library on first
use, the way the FLUX app imports diffusers: none of that is any request's output."""

from __future__ import annotations

import logging
import warnings

from pydantic import BaseModel

import openfal

log = logging.getLogger("noisy")

warnings.warn("noisy: warned at import", stacklevel=1)
log.warning("noisy: logged at import")
print("noisy: printed at import")


class NoisyInput(BaseModel):
    text: str = "hello"


class Noisy(openfal.App):
    app_name = "noisy"

    def setup(self) -> None:
        warnings.warn("noisy: warned in setup", stacklevel=1)
        log.warning("noisy: logged in setup")
        print("noisy: printed in setup")

    @openfal.endpoint("/")
    def run(self, input: NoisyInput) -> dict:
        import noisy_lib  # beside this file; the runner puts its folder on sys.path

        print(f"noisy: the request's own output: {input.text}")
        warnings.warn("noisy: the request's own warning", stacklevel=1)
        log.warning("noisy: the request's own log")
        return {"lib": noisy_lib.NAME}
