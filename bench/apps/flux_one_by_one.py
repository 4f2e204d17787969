"""The FLUX schnell app as it was before dynamic batching: one request a call, one request a
runner at a time. bench/bench_batching.py measures the batched app against it."""

from __future__ import annotations

import openfal
from openfal.models.flux import SCHNELL, FluxBase, FluxOutput, FluxSchnellInput


class FluxOneByOne(FluxBase):
    app_name = "flux-one-by-one"

    @openfal.endpoint("/")
    def run(self, input: FluxSchnellInput) -> FluxOutput:
        return self.generate_flux(SCHNELL, input, FluxOutput)
