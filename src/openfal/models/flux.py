"""FLUX text-to-image: ``fal-ai/flux/schnell``, ``fal-ai/flux/dev`` and ``openfal/flux``.

Runs diffusers' ``FluxPipeline`` on weights found by :mod:`openfal.models.weights`. The
inputs and outputs follow the hosted endpoints' documented schema.

``enable_safety_checker`` is accepted for compatibility, but openfal ships no NSFW
classifier that runs offline: nothing is filtered and ``has_nsfw_concepts`` is all false.
When the weights are a random test model (``openfal models make-tiny``), the images are
noise, and the result's ``notice`` and the request's logs say so.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

import openfal
from openfal.app.context import current_request
from openfal.models.weights import device_and_dtype, require_model, require_runtime

SCHNELL = "black-forest-labs/FLUX.1-schnell"
DEV = "black-forest-labs/FLUX.1-dev"

ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9",
                          "landscape_4_3", "landscape_16_9"]
PRESET_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
PREVIEW_COUNT = 4
PREVIEW_MAX_SIDE = 256
NOISE_NOTICE = "These weights are random (a test model): the images are noise."


class ImageSize(BaseModel):
    width: int = Field(default=512, ge=64, le=2048, description="Width in pixels, a multiple of 8.")
    height: int = Field(default=512, ge=64, le=2048,
                        description="Height in pixels, a multiple of 8.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


class FluxInput(BaseModel):
    prompt: str = Field(min_length=1, description="The prompt to generate an image from.",
                        examples=["a watercolor painting of mountains at sunset"])
    image_size: ImageSizePreset | ImageSize = Field(
        default="landscape_4_3", description="A preset name, or a custom {width, height}.")
    num_inference_steps: int = Field(default=28, ge=1, le=50,
                                     description="The number of denoising steps.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="The same seed and input give the same image.")
    guidance_scale: float = Field(default=3.5, ge=1, le=20,
                                  description="How closely to follow the prompt.")
    sync_mode: bool = Field(default=False, description=(
        "Return the images as data URIs in the response instead of storing them."))
    num_images: int = Field(default=1, ge=1, le=4, description="The number of images.")
    enable_safety_checker: bool = Field(default=True, description=(
        "Accepted for compatibility; openfal has no offline safety checker."))
    output_format: Literal["jpeg", "png"] = Field(default="jpeg",
                                                  description="The format of the images.")


class FluxSchnellInput(FluxInput):
    num_inference_steps: int = Field(default=4, ge=1, le=12,
                                     description="The number of denoising steps.")


class Timings(BaseModel):
    inference: float


class FluxOutput(BaseModel):
    images: list[openfal.Image] = Field(description="The generated images.")
    timings: Timings
    seed: int = Field(description="The seed used, to reproduce the images.")
    has_nsfw_concepts: list[bool]
    prompt: str
    notice: str | None = Field(default=None, description="Set when the output is not real.")


class FluxBase(openfal.App):
    """Loads FLUX pipelines on first use and generates with them; subclasses add endpoints."""

    keep_alive = 300
    max_multiplexing = 1
    request_timeout = 1800

    def setup(self) -> None:
        require_runtime("torch", "diffusers", "transformers")
        self._pipelines: dict[str, Any] = {}
        self._noise: dict[str, bool] = {}
        self._lock = threading.Lock()

    def pipeline(self, hub_id: str) -> Any:
        with self._lock:
            if hub_id not in self._pipelines:
                self._pipelines[hub_id] = self._load(hub_id)
            return self._pipelines[hub_id]

    def _load(self, hub_id: str) -> Any:
        from diffusers import FluxPipeline

        from openfal.models.tiny import is_tiny_random

        path = require_model(hub_id)
        device, dtype = device_and_dtype()
        print(f"loading {hub_id} from {path} on {device} ({dtype})")
        pipeline = FluxPipeline.from_pretrained(path, dtype=dtype).to(device)
        pipeline.set_progress_bar_config(disable=True)
        self._noise[hub_id] = is_tiny_random(path)
        return pipeline

    def generate(self, hub_id: str, input: FluxInput) -> FluxOutput:
        import torch

        pipeline = self.pipeline(hub_id)
        noise = self._noise[hub_id]
        if noise:
            print(NOISE_NOTICE)
        width, height = _pixels(input.image_size)
        seed = input.seed if input.seed is not None else secrets.randbits(32)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        started = time.perf_counter()
        result = pipeline(
            prompt=input.prompt, width=width, height=height,
            num_inference_steps=input.num_inference_steps,
            guidance_scale=input.guidance_scale, num_images_per_prompt=input.num_images,
            generator=generator, max_sequence_length=_max_sequence_length(pipeline),
            callback_on_step_end=_StepReporter(pipeline, width, height,
                                               input.num_inference_steps),
        )
        inference = time.perf_counter() - started
        images = [openfal.Image.from_pil(image, input.output_format,
                                         file_name=_file_name(i, input.output_format, noise))
                  for i, image in enumerate(result.images)]
        return FluxOutput(images=images, timings=Timings(inference=inference), seed=seed,
                          has_nsfw_concepts=[False] * len(images), prompt=input.prompt,
                          notice=NOISE_NOTICE if noise else None)


class Flux(FluxBase):
    """FLUX.1 [schnell] at ``fal-ai/flux/schnell``, FLUX.1 [dev] at ``fal-ai/flux/dev``."""

    app_owner = "fal-ai"
    app_name = "flux"

    @openfal.endpoint("/schnell")
    def schnell(self, input: FluxSchnellInput) -> FluxOutput:
        return self.generate(SCHNELL, input)

    @openfal.endpoint("/dev")
    def dev(self, input: FluxInput) -> FluxOutput:
        return self.generate(DEV, input)


class OpenfalFlux(FluxBase):
    """``openfal/flux``: FLUX.1 [schnell] under openfal's own name."""

    app_name = "flux"

    @openfal.endpoint("/")
    def run(self, input: FluxSchnellInput) -> FluxOutput:
        return self.generate(SCHNELL, input)


def _pixels(size: str | ImageSize) -> tuple[int, int]:
    if isinstance(size, ImageSize):
        return size.width, size.height
    return PRESET_SIZES[size]


def _max_sequence_length(pipeline: Any) -> int:
    # Real FLUX takes 256 (schnell) or 512 T5 tokens; a tiny test tokenizer has fewer.
    return min(512, pipeline.tokenizer_2.model_max_length)


def _file_name(index: int, output_format: str, noise: bool) -> str:
    ext = "jpg" if output_format == "jpeg" else output_format
    return f"{'random-noise-' if noise else ''}image-{index}.{ext}"


class _StepReporter:
    """The pipeline's step callback: progress, cancellation, and previews for streams."""

    def __init__(self, pipeline: Any, width: int, height: int, steps: int):
        self.pipeline = pipeline
        self.width = width
        self.height = height
        self.steps = steps
        ctx = current_request()
        self.previews = bool(ctx and ctx.streaming)
        self.preview_every = max(1, steps // PREVIEW_COUNT)

    def __call__(self, pipeline: Any, step: int, timestep: Any,
                 tensors: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        openfal.progress(done, self.steps)
        if self.previews and done < self.steps and done % self.preview_every == 0:
            openfal.partial({"images": [image.model_dump() for image in
                                        self._preview(tensors["latents"])],
                             "step": done, "num_inference_steps": self.steps})
        return tensors

    def _preview(self, latents: Any) -> list[openfal.Image]:
        import torch

        vae = self.pipeline.vae
        with torch.no_grad():
            unpacked = self.pipeline._unpack_latents(latents, self.height, self.width,
                                                     self.pipeline.vae_scale_factor)
            unpacked = unpacked / vae.config.scaling_factor + vae.config.shift_factor
            decoded = vae.decode(unpacked, return_dict=False)[0]
        images = self.pipeline.image_processor.postprocess(decoded, output_type="pil")
        for image in images:
            image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        return [openfal.Image.from_pil(image, "jpeg", inline=True) for image in images]
