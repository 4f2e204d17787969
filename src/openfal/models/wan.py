"""Wan 2.1 text-to-video and image-to-video on this machine: ``openfal/wan/t2v`` (T2V 1.3B),
``openfal/wan/t2v-14b`` (T2V 14B) and ``openfal/wan/i2v`` (I2V 14B 720P).

One App class per model (each its own runner pool, loading one checkpoint), all under the app
id ``openfal/wan``. Frames, sizes, seeds, progress, cancellation, LoRAs and the MP4 output are
as in :mod:`openfal.models.video`. What is particular here:

- ``resolution``: ``480p`` (832x480 at 16:9) or ``720p`` (1280x720), in the ``aspect_ratio``
  asked for (image-to-video: ``auto``, the default, keeps the input image's aspect ratio at
  the preset's area), or an exact ``{width, height}``.
- The VAE runs in float32 whatever the rest runs in, as Wan's authors recommend.
- Image-to-video conditions on the input image resized to the generation size; it is the first
  frame of the video.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

import openfal
from openfal.catalog.schemas.common import LoraWeight
from openfal.models.flux import (
    MAX_STEPS,
    fit,
    generation_size,
    input_image,
    max_sequence_length,
)
from openfal.models.video import (
    AspectRatio,
    VideoDiffusionApp,
    VideoOutput,
    VideoSize,
)
from openfal.models.weights import device_and_dtype, require_model

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

T2V_1_3B = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
T2V_14B = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
I2V_14B_720P = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"

WanResolution = Literal["480p", "720p"]
WAN_PRESETS: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {"16:9": (832, 480), "9:16": (480, 832), "1:1": (624, 624)},
    "720p": {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)},
}
WAN_MAX_AREA = 1280 * 720
WAN_NATIVE_FPS = 16
MAX_FRAMES = 161
MAX_LORAS = 8


class WanTextToVideoInput(BaseModel):
    prompt: str = Field(min_length=1, description="The prompt to generate the video from.",
                        examples=["a red fox running through fresh snow, cinematic"])
    negative_prompt: str = Field(default="", description="What the video should not show.")
    num_frames: int = Field(default=81, ge=1, le=MAX_FRAMES, description=(
        "The number of frames. The model makes 4k+1 frames; any count is returned exactly."))
    frames_per_second: int = Field(default=WAN_NATIVE_FPS, ge=1, le=60, description=(
        "The frame rate of the video file (Wan is trained at 16)."))
    resolution: WanResolution | VideoSize = Field(default="480p", description=(
        "480p or 720p in the aspect ratio asked for, or an exact {width, height}."))
    aspect_ratio: AspectRatio = Field(default="16:9", description=(
        "The aspect ratio of a preset resolution (ignored for an exact size)."))
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1,
                             description="The same seed and input give the same video.")
    num_inference_steps: int = Field(default=30, ge=1, le=MAX_STEPS,
                                     description="The number of denoising steps.")
    guidance_scale: float = Field(default=5.0, ge=0, le=20, description=(
        "How closely to follow the prompt (classifier-free guidance; 1 or less: none)."))
    loras: list[LoraWeight] = Field(default_factory=list, max_length=MAX_LORAS, description=(
        "LoRAs (safetensors) applied for this request, each at its scale."))
    sync_mode: bool = Field(default=False, description=(
        "Return the video as a data URI in the response instead of storing it."))


class WanImageToVideoInput(WanTextToVideoInput):
    image_url: openfal.ImageUrl = Field(description="The first frame of the video.")
    aspect_ratio: AspectRatio | Literal["auto"] = Field(default="auto", description=(
        "The aspect ratio of a preset resolution; auto: the input image's."))


def wan_output_size(resolution: str | VideoSize, aspect_ratio: str,
                    image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The video's size: an exact ``{width, height}``, or a preset in ``aspect_ratio``
    (``auto``: ``image_size``'s aspect ratio at the preset's area, sides multiples of 16)."""
    if isinstance(resolution, VideoSize):
        return resolution.width, resolution.height
    if aspect_ratio != "auto":
        return WAN_PRESETS[resolution][aspect_ratio]
    if image_size is None:
        raise ValueError("aspect_ratio auto needs the input image's size")
    area = math.prod(WAN_PRESETS[resolution]["16:9"])
    width, height = image_size
    scale = math.sqrt(area / (width * height))
    return generation_size(round(width * scale), round(height * scale), max_area=area)


def load_wan(hub_id: str) -> Any:
    """The checkpoint's pipeline in the runner's dtype, with its VAE in float32."""
    import torch
    from diffusers import AutoencoderKLWan, DiffusionPipeline

    path = require_model(hub_id)
    _, dtype = device_and_dtype()
    vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", dtype=torch.float32)
    return DiffusionPipeline.from_pretrained(path, vae=vae, dtype=dtype)


class WanBase(VideoDiffusionApp):
    """Wan 2.1 generation under the app ``openfal/wan``; each subclass serves one checkpoint
    at one path."""

    app_name = "wan"

    runtime_modules = (*VideoDiffusionApp.runtime_modules, "peft")
    pipeline_classes = ("WanPipeline",)

    def wan_call(self, pipeline: Any, input: WanTextToVideoInput, size: tuple[int, int]
                 ) -> dict[str, Any]:
        width, height = size
        return {"prompt": input.prompt, "negative_prompt": input.negative_prompt,
                "width": width, "height": height,
                "num_inference_steps": input.num_inference_steps,
                "guidance_scale": input.guidance_scale,
                "max_sequence_length": max_sequence_length(pipeline.tokenizer)}

    def wan_video(self, hub_id: str, input: WanTextToVideoInput, output_size: tuple[int, int],
                  image: PILImage | None = None) -> VideoOutput:
        """``hub_id``'s video for ``input`` at ``output_size``, starting from ``image`` (taken
        at the generation size) when there is one."""
        size = generation_size(*output_size, max_area=WAN_MAX_AREA)
        loaded = self.loaded(hub_id, partial(load_wan, hub_id))
        call = self.wan_call(loaded.pipeline, input, size)
        if image is not None:
            call["image"] = fit(image, size)
        generated = self.generate_video(
            loaded, loaded.pipeline, call, seed=input.seed, steps=input.num_inference_steps,
            num_frames=input.num_frames, output_size=output_size, loras=input.loras)
        return generated.result(input.prompt, input.frames_per_second)

    def text_to_video(self, hub_id: str, input: WanTextToVideoInput) -> VideoOutput:
        return self.wan_video(hub_id, input, wan_output_size(input.resolution,
                                                             input.aspect_ratio))


class WanT2V(WanBase):
    """``openfal/wan/t2v``: Wan 2.1 T2V 1.3B."""

    @openfal.endpoint("/t2v")
    def t2v(self, input: WanTextToVideoInput) -> VideoOutput:
        return self.text_to_video(T2V_1_3B, input)


class WanT2V14B(WanBase):
    """``openfal/wan/t2v-14b``: Wan 2.1 T2V 14B."""

    @openfal.endpoint("/t2v-14b")
    def t2v_14b(self, input: WanTextToVideoInput) -> VideoOutput:
        return self.text_to_video(T2V_14B, input)


class WanI2V(WanBase):
    """``openfal/wan/i2v``: Wan 2.1 I2V 14B 720P; the input image is the first frame."""

    # WanImageToVideoPipeline cleans prompts with ftfy and fails without it.
    runtime_modules = (*WanBase.runtime_modules, "ftfy")
    pipeline_classes = ("WanImageToVideoPipeline",)

    @openfal.endpoint("/i2v")
    def i2v(self, input: WanImageToVideoInput) -> VideoOutput:
        image = input_image(input.image_url, "image_url")
        output_size = wan_output_size(input.resolution, input.aspect_ratio, image.size)
        return self.wan_video(I2V_14B_720P, input, output_size, image)
