"""FLUX.1 Kontext [dev] with LoRAs: ``fal-ai/flux-kontext-lora`` (edit), ``.../inpaint`` and
``.../text-to-image``, with exactly the model pages' input schemas.

The three endpoints share one model in one runner: ``FluxKontextPipeline`` is loaded once from
``black-forest-labs/FLUX.1-Kontext-dev`` and ``FluxKontextInpaintPipeline`` is built over the
same components. Sizes, seeds, steps, previews, LoRAs and the safety report are as in
:mod:`openfal.models.flux`. What is particular here:

- Edit, ``resolution_mode``: ``match_input`` (default) returns the input image's size (scaled
  down when it is over the model's 1024x1024 area), generated at the nearest multiple of 16;
  ``auto`` picks the Kontext training resolution nearest the input's aspect ratio (diffusers'
  ``PREFERRED_KONTEXT_RESOLUTIONS``); ``W:H`` generates that aspect ratio at about one
  megapixel, sides multiples of 16.
- Inpaint: the image, the mask (white = repaint) and the reference image are all taken at the
  image's size. Outside the mask the result keeps the input image's pixels: they are composited
  back after decoding (with the mask as alpha), so the VAE round trip does not blur them.
- ``acceleration``: ``none`` runs every transformer block at every step; ``regular`` and
  ``high`` turn on diffusers' First Block Cache (``FirstBlockCacheConfig``) for the call, with
  threshold 0.05 and 0.12: a step whose first block changes less than that reuses the cached
  output of the other blocks. Faster, slightly different images; ``high`` skips more.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import openfal
from openfal.catalog.schemas import flux_kontext_lora as pages
from openfal.models.flux import (
    Accelerator,
    FluxBase,
    check_generation_input,
    check_range,
    fit,
    generation_size,
    input_image,
    packed_preview,
    with_safety_report,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"
KONTEXT_MAX_AREA = 1024 * 1024
ACCELERATION_THRESHOLDS: dict[str, float | None] = {"none": None, "regular": 0.05, "high": 0.12}

KontextEditOutput = with_safety_report(pages.FluxKontextLoraOutput)
KontextInpaintOutput = with_safety_report(pages.FluxKontextLoraInpaintOutput)
KontextTextToImageOutput = with_safety_report(pages.FluxKontextLoraTextToImageOutput)


class FluxKontextLora(FluxBase):
    """The ``fal-ai/flux-kontext-lora`` endpoints on one shared FLUX.1 Kontext [dev] model."""

    app_owner = "fal-ai"
    app_name = "flux-kontext-lora"
    runtime_modules = ("torch", "diffusers", "transformers", "peft")
    pipeline_classes = ("FluxKontextPipeline", "FluxKontextInpaintPipeline")

    @openfal.endpoint("/")
    def edit(self, input: pages.FluxKontextLoraInput) -> KontextEditOutput:
        check_generation_input(input)
        image = input_image(input.image_url, "image_url")
        width, height = edit_generation_size(image.size, input.resolution_mode)
        output_size = (match_input_size(image.size) if input.resolution_mode == "match_input"
                       else (width, height))
        loaded = self.loaded(KONTEXT)
        call = self.flux_call(loaded.pipeline, input, width, height)
        call["image"] = fit(image, (width, height))
        generated = self.generate(
            loaded, loaded.pipeline, call, seed=input.seed, steps=input.num_inference_steps,
            output_size=output_size, loras=input.loras,
            preview=packed_preview(loaded.pipeline, width, height),
            accelerate=accelerator(input.acceleration))
        return generated.result(KontextEditOutput, input.prompt, input.output_format)

    @openfal.endpoint("/inpaint")
    def inpaint(self, input: pages.FluxKontextLoraInpaintInput) -> KontextInpaintOutput:
        from diffusers import FluxKontextInpaintPipeline

        check_generation_input(input)
        check_range("strength", input.strength, 0.01, 1)
        steps = int(input.num_inference_steps * input.strength)
        if steps < 1:
            raise openfal.FieldException("strength", "num_inference_steps x strength must "
                                         "be at least one step")
        image = input_image(input.image_url, "image_url")
        mask = input_image(input.mask_url, "mask_url").convert("L")
        reference = input_image(input.reference_image_url, "reference_image_url")
        output_size = match_input_size(image.size)
        size = generation_size(*image.size, max_area=KONTEXT_MAX_AREA)
        loaded = self.loaded(KONTEXT)
        pipeline = loaded.variant(FluxKontextInpaintPipeline)
        call = self.flux_call(pipeline, input, *size)
        call.update(image=fit(image, size), mask_image=fit(mask, size),
                    image_reference=fit(reference, size), strength=input.strength)
        generated = self.generate(
            loaded, pipeline, call, seed=input.seed, steps=steps, output_size=output_size,
            loras=input.loras, preview=packed_preview(pipeline, *size),
            accelerate=accelerator(input.acceleration))
        original, alpha = fit(image, output_size), fit(mask, output_size)
        generated.images = [keep_unmasked(original, result, alpha)
                            for result in generated.images]
        return generated.result(KontextInpaintOutput, input.prompt, input.output_format)

    @openfal.endpoint("/text-to-image")
    def text_to_image(self, input: pages.FluxKontextLoraTextToImageInput
                      ) -> KontextTextToImageOutput:
        check_generation_input(input)
        return self.generate_flux(KONTEXT, input, KontextTextToImageOutput, loras=input.loras,
                                  accelerate=accelerator(input.acceleration))

    def flux_call(self, pipeline: Any, input: Any, width: int, height: int,
                  num_images: int | None = None) -> dict[str, Any]:
        """FLUX's arguments, with ``max_area`` the generation's own area and
        ``_auto_resize`` off: the app has already chosen the size."""
        return {**super().flux_call(pipeline, input, width, height, num_images),
                "max_area": width * height, "_auto_resize": False}


def match_input_size(size: tuple[int, int]) -> tuple[int, int]:
    """The input's size, scaled down (aspect ratio kept) when over the model's area."""
    width, height = size
    scale = min(1.0, math.sqrt(KONTEXT_MAX_AREA / (width * height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


def edit_generation_size(size: tuple[int, int], mode: str) -> tuple[int, int]:
    """The size an edit generates at for ``resolution_mode``."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    width, height = size
    if mode == "match_input":
        return generation_size(width, height, max_area=KONTEXT_MAX_AREA)
    if mode == "auto":
        _, best_width, best_height = min(
            (abs(width / height - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        return best_width, best_height
    ratio_width, ratio_height = (int(part) for part in mode.split(":"))
    side = math.sqrt(KONTEXT_MAX_AREA / (ratio_width * ratio_height))
    return generation_size(round(ratio_width * side), round(ratio_height * side),
                           max_area=KONTEXT_MAX_AREA)


def keep_unmasked(original: PILImage, result: PILImage, mask: PILImage) -> PILImage:
    """``result`` where ``mask`` is white, ``original`` where it is black (blended between)."""
    from PIL import Image as PIL

    return PIL.composite(result.convert("RGB"), original, mask)


def accelerator(acceleration: str) -> Accelerator | None:
    """What the page's ``acceleration`` runs the call in (see the module docstring)."""
    threshold = ACCELERATION_THRESHOLDS[acceleration]
    return None if threshold is None else partial(first_block_cache, threshold=threshold)


@contextmanager
def first_block_cache(pipeline: Any, threshold: float) -> Iterator[None]:
    """diffusers' First Block Cache on the pipeline's transformer for one call, then removed."""
    from diffusers.hooks import FirstBlockCacheConfig

    transformer = pipeline.transformer
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    try:
        with transformer.cache_context("cond"):
            yield
    finally:
        transformer.disable_cache()
