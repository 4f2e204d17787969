"""An openfal app (not an SDK one) that reports what ``import fal`` gives its runner: the
compatibility layer must not reach it."""

from pydantic import BaseModel

import openfal


class Probe(BaseModel):
    fal: str


class FalProbe(openfal.App, app_name="fal-probe"):
    @openfal.endpoint("/")
    def probe(self) -> Probe:
        try:
            import fal
        except ImportError as exc:
            return Probe(fal=f"ImportError: {exc}")
        return Probe(fal=getattr(fal, "__file__", None) or repr(fal))
