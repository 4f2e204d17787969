"""FLUX.1 Krea [dev] with LoRAs: ``fal-ai/flux-krea-lora/stream``, with exactly the model
page's input schema.

diffusers' ``FluxPipeline`` on the ``black-forest-labs/FLUX.1-Krea-dev`` weights (the FLUX.1
[dev] architecture: ``openfal models make-tiny flux DIR`` makes a test model of it). Sizes,
seeds, steps, LoRAs and the safety report are as in :mod:`openfal.models.flux`. Called as
``POST /fal-ai/flux-krea-lora/stream`` it streams previews of the latents every few steps,
then the result; as the page says, a streamed request makes one image whatever
``num_images`` says. Through the queue it honours ``num_images``.
"""

from __future__ import annotations

import openfal
from openfal.catalog.schemas import flux_krea_lora as pages
from openfal.models.flux import FluxBase, check_generation_input, with_safety_report

KREA = "black-forest-labs/FLUX.1-Krea-dev"

KreaStreamOutput = with_safety_report(pages.FluxKreaLoraStreamOutput)


class FluxKreaLora(FluxBase):
    """``fal-ai/flux-krea-lora/stream``: FLUX.1 Krea [dev] text-to-image with LoRAs."""

    app_owner = "fal-ai"
    app_name = "flux-krea-lora"
    runtime_modules = ("torch", "diffusers", "transformers", "peft")

    @openfal.endpoint("/stream")
    def stream(self, input: pages.FluxKreaLoraStreamInput) -> KreaStreamOutput:
        check_generation_input(input)
        ctx = openfal.current_request()
        streamed = bool(ctx and ctx.streaming)
        return self.generate_flux(KREA, input, KreaStreamOutput, loras=input.loras,
                                  num_images=1 if streamed else None)
