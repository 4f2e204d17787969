"""FLUX text-to-image (``fal-ai/flux/schnell``, ``fal-ai/flux/dev``, ``openfal/flux``), and the
pieces every diffusers image app of openfal shares (FLUX Kontext, FLUX Krea, HiDream).

The apps run diffusers pipelines on weights found by :mod:`openfal.models.weights`, loaded once
per runner and never per request. Shared behaviour:

- Sizes: a size the schema accepts comes back at exactly that size. The model generates at the
  nearest size it supports (multiples of 16, within its area limit) and the images are resized
  to the requested size when the two differ.
- Seeds: the same seed and input give the same images (the noise comes from a CPU generator);
  without a seed one is drawn and returned.
- Every step reports progress and is a cancellation point; a streaming caller (``/stream``)
  also gets a few decoded previews of the latents.
- Batching: the text-to-image endpoints serve up to four waiting requests alike in size,
  steps, guidance and image count in one pipeline call (``FLUX_BATCH``), each with its own
  prompt, seed and generator.
- Safety: openfal ships no NSFW classifier, so nothing is filtered and no check is claimed:
  ``has_nsfw_concepts`` is null for each image, ``safety_checked`` is false and ``notice``
  says so. When the weights are a random test model (``openfal models make-tiny``) the images
  are noise, and ``notice`` and the request's logs say that too.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, create_model

import openfal
from openfal.app.context import current_request
from openfal.app.errors import FieldException
from openfal.models.weights import device_and_dtype, place_pipeline, require_model, require_runtime

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from openfal.models.lora import LoraFile

SCHNELL = "black-forest-labs/FLUX.1-schnell"
DEV = "black-forest-labs/FLUX.1-dev"

ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9",
                          "landscape_4_3", "landscape_16_9"]
PRESET_SIZES: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576),
}
# The hosted pages' limit on a side, for requested sizes and input images alike.
MAX_SIDE = 14142
# FLUX-family latents are 2x2 patches of an 8x VAE: sides are multiples of 16.
MODEL_MULTIPLE = 16
MIN_GENERATION_SIDE = 64
MAX_GENERATION_AREA = 2048 * 2048
MAX_NUM_IMAGES = 4
MAX_STEPS = 100
PREVIEW_COUNT = 4
PREVIEW_MAX_SIDE = 256
NOISE_NOTICE = "These weights are random (a test model): the images are noise."
NO_SAFETY_CHECK = ("No safety checker ran: nothing was filtered, and has_nsfw_concepts is "
                   "null for each image.")

OutputModel = TypeVar("OutputModel", bound=BaseModel)
PreviewDecoder = Callable[[Any], list["PILImage"]]
# Something to run the pipeline's call in (e.g. a cache on its transformer), given the pipeline.
Accelerator = Callable[[Any], AbstractContextManager[Any]]


class ImageSize(BaseModel):
    width: int = Field(default=512, gt=0, le=MAX_SIDE, description=(
        "Width in pixels. The model generates at the nearest size it supports and the "
        "image is resized to exactly this width."))
    height: int = Field(default=512, gt=0, le=MAX_SIDE, description=(
        "Height in pixels, honoured exactly as the width is."))


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
    num_images: int = Field(default=1, ge=1, le=MAX_NUM_IMAGES,
                            description="The number of images.")
    enable_safety_checker: bool = Field(default=True, description=(
        "Accepted for compatibility; openfal has no offline safety checker, so no check runs "
        "and has_nsfw_concepts is null."))
    output_format: Literal["jpeg", "png"] = Field(default="jpeg",
                                                  description="The format of the images.")


class FluxSchnellInput(FluxInput):
    num_inference_steps: int = Field(default=4, ge=1, le=12,
                                     description="The number of denoising steps.")


class Timings(BaseModel):
    inference: float


class SafetyReport(BaseModel):
    """What an image result says about safety checking: here, that none ran."""

    has_nsfw_concepts: list[bool | None] | None = Field(default=None, description=(
        "Per image, whether a safety checker found NSFW content; null where no checker ran "
        "(openfal runs none)."))
    safety_checked: bool = Field(default=False, description=(
        "Whether a safety checker looked at the images. Always false: openfal ships none."))
    notice: str | None = Field(default=None, description=(
        "What the result does not show: no safety check, random test weights."))


class FluxOutput(SafetyReport):
    images: list[openfal.Image] = Field(description="The generated images.")
    timings: Timings
    seed: int = Field(description="The seed used, to reproduce the images.")
    prompt: str


def with_safety_report(output_model: type[OutputModel]) -> type[OutputModel]:
    """``output_model`` (a page's output schema) with :class:`SafetyReport`'s fields, so that
    ``has_nsfw_concepts`` may hold nulls and the result can say no checker ran."""
    return create_model(output_model.__name__, __base__=(SafetyReport, output_model),
                        __module__=output_model.__module__)


# Loading


@dataclass
class LoadedPipeline:
    """A pipeline loaded once per runner, with the lock that serialises its use: LoRA adapters
    live in the shared model, so one request at a time applies and removes them."""

    pipeline: Any
    noise: bool
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    variants: dict[str, Any] = field(default_factory=dict)

    def variant(self, pipeline_class: Any) -> Any:
        """``pipeline_class`` over the same components (no copy of the weights)."""
        name = pipeline_class.__name__
        if type(self.pipeline) is pipeline_class:
            return self.pipeline
        if name not in self.variants:
            self.variants[name] = place_pipeline(pipeline_class(**self.pipeline.components),
                                                 self.device)
        return self.variants[name]


class DiffusersApp(openfal.App):
    """Loads pipelines on first use, keeps them for the runner's life, and generates."""

    keep_alive = 300
    max_multiplexing = 1
    request_timeout = 1800
    # A GPU machine, as on the hosted platform: each runner gets one of the devices a
    # worker started with --gpus manages (without --gpus, whatever it is given).
    machine_type = "GPU-H100"
    # Python modules the app needs (a 503 naming the missing ones otherwise).
    runtime_modules: tuple[str, ...] = ("torch", "diffusers", "transformers")
    # The diffusers pipelines it loads (on first use). setup() imports their modules, and
    # with them the text encoders' and what they pull in (peft, accelerate: about a second):
    # a runner template then has them for the runners it forks (runner/template.py).
    pipeline_classes: tuple[str, ...] = ()

    def setup(self) -> None:
        require_runtime(*self.runtime_modules)
        import diffusers

        for name in self.pipeline_classes:
            getattr(diffusers, name)
        self._loaded: dict[str, LoadedPipeline] = {}
        self._loading = threading.Lock()

    def loaded(self, hub_id: str, load: Callable[[], Any] | None = None) -> LoadedPipeline:
        """The pipeline of ``hub_id``, loaded by ``load`` (default: diffusers' from_pretrained
        of the folder ``require_model`` finds) the first time it is asked for."""
        with self._loading:
            if hub_id not in self._loaded:
                self._loaded[hub_id] = self._load(hub_id, load)
            return self._loaded[hub_id]

    def _load(self, hub_id: str, load: Callable[[], Any] | None) -> LoadedPipeline:
        from diffusers import DiffusionPipeline

        from openfal.models.tiny import is_tiny_random

        path = require_model(hub_id)
        device, dtype = device_and_dtype()
        print(f"loading {hub_id} from {path} on {device} ({dtype})")
        pipeline = load() if load else DiffusionPipeline.from_pretrained(path, dtype=dtype)
        return LoadedPipeline(place_pipeline(pipeline, device), is_tiny_random(path), device)

    def generate(self, loaded: LoadedPipeline, pipeline: Any, call: dict[str, Any], *,
                 seed: int | None, **options: Any) -> GeneratedImages:
        """Run ``pipeline`` (``loaded``'s or a variant of it) with ``call``'s arguments (see
        :func:`seeded_call`; ``options`` as :meth:`generate_batch` takes them)."""
        return self.generate_batch(loaded, pipeline, call, seeds=[seed], **options)[0]

    def generate_batch(self, loaded: LoadedPipeline, pipeline: Any, call: dict[str, Any], *,
                       seeds: Sequence[int | None], steps: int,
                       output_size: tuple[int, int] | None,
                       loras: Sequence[Any] | None = None,
                       preview: PreviewDecoder | None = None,
                       accelerate: Accelerator | None = None) -> list[GeneratedImages]:
        """One pipeline call for several requests (``call``'s prompt a list, one per seed);
        each request's images, generated from its own seed, come back resized to
        ``output_size`` (None: as generated)."""
        per_seed = call.get("num_images_per_prompt", 1)
        output, seeds, seconds = seeded_call(loaded, pipeline, call, seeds=seeds,
                                             images_per_seed=per_seed, steps=steps,
                                             loras=loras, preview=preview,
                                             accelerate=accelerate)
        images = output.images
        if output_size is not None:
            images = [fit(image, output_size) for image in images]
        return [GeneratedImages(images[i * per_seed:(i + 1) * per_seed], seed, seconds,
                                loaded.noise) for i, seed in enumerate(seeds)]


def seeded_call(loaded: LoadedPipeline, pipeline: Any, call: dict[str, Any], *,
                seeds: Sequence[int | None], steps: int, images_per_seed: int = 1,
                loras: Sequence[Any] | None = None, preview: PreviewDecoder | None = None,
                accelerate: Accelerator | None = None,
                noise_notice: str = NOISE_NOTICE) -> tuple[Any, list[int], float]:
    """Run ``pipeline`` with ``call`` plus a CPU generator per seed (drawn where None) and
    a step reporter (progress, cancellation, previews), with ``loras`` applied for this call
    only, under the pipeline's lock. Returns the pipeline's output, the seeds and the
    seconds it took.

    With several seeds (a batch), each seed's generator draws the noise of its own
    ``images_per_seed`` images, in the order one generator alone draws them, so a request's
    images match its unbatched ones up to the arithmetic of batched matrix products."""
    import torch

    from openfal.models.lora import fetch_loras, lora_adapters

    files: list[LoraFile] = fetch_loras(loras)
    if loaded.noise:
        print(noise_notice)
    drawn = [seed if seed is not None else secrets.randbits(32) for seed in seeds]
    generators = [torch.Generator(device="cpu").manual_seed(seed % 2**64) for seed in drawn]
    generator = (generators[0] if len(generators) == 1
                 else [g for g in generators for _ in range(images_per_seed)])
    started = time.perf_counter()
    speedup = accelerate(pipeline) if accelerate else nullcontext()
    with loaded.lock, lora_adapters(pipeline, files), speedup:
        output = pipeline(**call, generator=generator,
                          callback_on_step_end=StepReporter(steps, preview))
    return output, drawn, time.perf_counter() - started


@dataclass
class GeneratedImages:
    images: list[PILImage]
    seed: int
    seconds: float
    noise: bool

    def result(self, output_model: type[OutputModel], prompt: str,
               output_format: str) -> OutputModel:
        """The images stored (or inlined for ``sync_mode``) and described as
        ``output_model`` (one with :class:`SafetyReport`'s fields)."""
        files = [openfal.Image.from_pil(image, output_format,
                                        file_name=_file_name(i, output_format, self.noise))
                 for i, image in enumerate(self.images)]
        notices = [NO_SAFETY_CHECK, *([NOISE_NOTICE] if self.noise else [])]
        return output_model.model_validate({
            "images": [file.model_dump() for file in files],
            "timings": {"inference": self.seconds}, "seed": self.seed, "prompt": prompt,
            "has_nsfw_concepts": [None] * len(files), "safety_checked": False,
            "notice": " ".join(notices)})


# Sizes and inputs


def requested_size(size: Any, default: tuple[int, int] = PRESET_SIZES["landscape_4_3"],
                   field: str = "image_size") -> tuple[int, int]:
    """A preset name or a ``{width, height}`` (openfal's or a page's model) as pixels; a 422 on
    the field for a side below 1 or above :data:`MAX_SIDE`."""
    if size is None:
        return default
    if isinstance(size, str):
        return PRESET_SIZES[size]
    for side in ("width", "height"):
        check_range(f"{field}.{side}", getattr(size, side), 1, MAX_SIDE)
    return size.width, size.height


def generation_size(width: int, height: int, max_area: int = MAX_GENERATION_AREA
                    ) -> tuple[int, int]:
    """The size nearest ``width`` x ``height`` that a FLUX-family model generates: sides
    rounded to multiples of 16 (at least 64), scaled down to fit ``max_area``."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))

    def side(pixels: int) -> int:
        return max(MIN_GENERATION_SIDE, round(pixels * scale / MODEL_MULTIPLE) * MODEL_MULTIPLE)

    return side(width), side(height)


def fit(image: PILImage, size: tuple[int, int]) -> PILImage:
    """``image`` at exactly ``size`` (resampled when it differs)."""
    from PIL import Image as PIL

    return image if image.size == size else image.resize(size, PIL.Resampling.LANCZOS)


def input_image(url: Any, field: str) -> PILImage:
    """A fetched image input (the runner fetched it before the endpoint ran) as RGB, or a 422
    on the field when it is not an image or is too large."""
    from PIL import Image as PIL
    from PIL import UnidentifiedImageError

    try:
        with PIL.open(url.path) as opened:
            if max(opened.size) > MAX_SIDE:
                raise FieldException(field, f"the image is larger than {MAX_SIDE} "
                                     "pixels on a side")
            return opened.convert("RGB")
    except (UnidentifiedImageError, PIL.DecompressionBombError, OSError) as exc:
        raise FieldException(field, f"not an image that can be opened: {exc}",
                             type="image_load_error") from None


def check_range(field: str, value: float, low: float, high: float) -> None:
    """A 422 on ``field`` when ``value`` is outside [low, high] (or not a finite number)."""
    if not (math.isfinite(value) and low <= value <= high):
        raise FieldException(field, f"must be between {low} and {high}",
                             type="value_error")


def check_generation_input(input: Any) -> None:
    """Bounds of the fields every image page has, where the page's schema states none: a 422
    on the field instead of a failure inside the model."""
    check_range("num_images", input.num_images, 1, MAX_NUM_IMAGES)
    check_range("num_inference_steps", input.num_inference_steps, 1, MAX_STEPS)
    check_range("guidance_scale", input.guidance_scale, 0, 100)


def max_sequence_length(tokenizer: Any, limit: int = 512) -> int:
    # Real FLUX takes 256 (schnell) or 512 T5 tokens; a tiny test tokenizer has fewer.
    return min(limit, tokenizer.model_max_length)


def _file_name(index: int, output_format: str, noise: bool) -> str:
    ext = "jpg" if output_format == "jpeg" else output_format
    return f"{'random-noise-' if noise else ''}image-{index}.{ext}"


# Steps: progress, cancellation and previews


class StepReporter:
    """The pipeline's step callback: progress and cancellation at every step, and for
    streaming callers a few previews decoded by ``decode``."""

    def __init__(self, steps: int, decode: PreviewDecoder | None):
        self.steps = steps
        self.decode = decode
        ctx = current_request()
        self.previews = bool(ctx and ctx.streaming and decode)
        self.preview_every = max(1, steps // PREVIEW_COUNT)

    def __call__(self, pipeline: Any, step: int, timestep: Any,
                 tensors: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        openfal.progress(done, self.steps)
        if self.previews and done < self.steps and done % self.preview_every == 0:
            assert self.decode is not None
            images = [openfal.Image.from_pil(image, "jpeg", inline=True)
                      for image in self.decode(tensors["latents"])]
            openfal.partial({"images": [image.model_dump() for image in images],
                             "step": done, "num_inference_steps": self.steps})
        return tensors


def decode_preview(pipeline: Any, latents: Any) -> list[PILImage]:
    """Latents (unpacked, as the VAE takes them) as small PIL images."""
    import torch

    vae = pipeline.vae
    with torch.no_grad():
        scaled = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        decoded = vae.decode(scaled.to(vae.dtype), return_dict=False)[0]
    images = pipeline.image_processor.postprocess(decoded, output_type="pil")
    for image in images:
        image.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    return images


def packed_preview(pipeline: Any, width: int, height: int) -> PreviewDecoder:
    """Previews of a FLUX-family pipeline's packed latents for a ``width`` x ``height``
    generation."""
    def decode(latents: Any) -> list[PILImage]:
        unpacked = pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor)
        return decode_preview(pipeline, unpacked)

    return decode


# The FLUX apps


class FluxBase(DiffusersApp):
    """FLUX.1-family generation (``FluxPipeline`` and its Kontext siblings); subclasses add
    endpoints."""

    pipeline_classes = ("FluxPipeline",)

    def flux_call(self, pipeline: Any, input: Any, width: int, height: int,
                  num_images: int | None = None) -> dict[str, Any]:
        """The pipeline arguments from ``input``'s prompt, num_inference_steps,
        guidance_scale and num_images (unless ``num_images`` overrides it)."""
        return {"prompt": input.prompt, "width": width, "height": height,
                "num_inference_steps": input.num_inference_steps,
                "guidance_scale": input.guidance_scale,
                "num_images_per_prompt": num_images or input.num_images,
                "max_sequence_length": max_sequence_length(pipeline.tokenizer_2)}

    def generate_flux(self, hub_id: str, input: Any, output_model: type[OutputModel], *,
                      loras: Sequence[Any] | None = None, num_images: int | None = None,
                      accelerate: Accelerator | None = None) -> OutputModel:
        """Text-to-image at ``input.image_size``, seeded by ``input.seed``, as
        ``input.output_format``."""
        return self.generate_flux_batch(hub_id, [input], output_model, loras=loras,
                                        num_images=num_images, accelerate=accelerate)[0]

    def generate_flux_batch(self, hub_id: str, inputs: Sequence[Any],
                            output_model: type[OutputModel], *,
                            loras: Sequence[Any] | None = None, num_images: int | None = None,
                            accelerate: Accelerator | None = None) -> list[OutputModel]:
        """:meth:`generate_flux` for inputs alike in all :func:`flux_batch_key` names, in
        one pipeline call: their prompts, seeds and output formats are their own."""
        first = inputs[0]
        loaded = self.loaded(hub_id)
        pipeline = loaded.pipeline
        size = requested_size(first.image_size)
        width, height = generation_size(*size)
        call = self.flux_call(pipeline, first, width, height, num_images)
        if len(inputs) > 1:
            call["prompt"] = [input.prompt for input in inputs]
        generated = self.generate_batch(
            loaded, pipeline, call, seeds=[input.seed for input in inputs],
            steps=first.num_inference_steps, output_size=size, loras=loras,
            preview=packed_preview(pipeline, width, height), accelerate=accelerate)
        return [images.result(output_model, input.prompt, input.output_format)
                for images, input in zip(generated, inputs, strict=True)]


def flux_batch_key(input: Any) -> Hashable:
    """What FLUX requests must share to be generated in one call."""
    return (requested_size(input.image_size), input.num_inference_steps,
            input.guidance_scale, input.num_images)


# Up to four requests a call. No window by default: a lone request is not delayed, and under
# load the next batch gathers while one runs (a runner takes two batches' worth at once).
# OPENFAL_FLUX_BATCH_WAIT_SECONDS sets a window, for bursts that arrive spread out.
FLUX_BATCH = openfal.Batch(
    max_size=4, key=flux_batch_key,
    wait_seconds=float(os.environ.get("OPENFAL_FLUX_BATCH_WAIT_SECONDS", "0")))
FLUX_MULTIPLEXING = 2 * FLUX_BATCH.max_size


class Flux(FluxBase):
    """FLUX.1 [schnell] at ``fal-ai/flux/schnell``, FLUX.1 [dev] at ``fal-ai/flux/dev``."""

    app_owner = "fal-ai"
    app_name = "flux"
    max_multiplexing = FLUX_MULTIPLEXING

    @openfal.endpoint("/schnell", batch=FLUX_BATCH)
    def schnell(self, inputs: list[FluxSchnellInput]) -> list[FluxOutput]:
        return self.generate_flux_batch(SCHNELL, inputs, FluxOutput)

    @openfal.endpoint("/dev", batch=FLUX_BATCH)
    def dev(self, inputs: list[FluxInput]) -> list[FluxOutput]:
        return self.generate_flux_batch(DEV, inputs, FluxOutput)


class OpenfalFlux(FluxBase):
    """``openfal/flux``: FLUX.1 [schnell] under openfal's own name."""

    app_name = "flux"
    max_multiplexing = FLUX_MULTIPLEXING

    @openfal.endpoint("/", batch=FLUX_BATCH)
    def run(self, inputs: list[FluxSchnellInput]) -> list[FluxOutput]:
        return self.generate_flux_batch(SCHNELL, inputs, FluxOutput)
