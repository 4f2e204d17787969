"""What openfal's local text/image-to-video apps share (Wan, Kandinsky 5), on top of
:mod:`openfal.models.flux`'s loading, seeds and step reporting.

- Frames: video VAEs compress time 4x, so a model makes ``4k + 1`` frames. A count the schema
  accepts comes back exactly: the model makes the smallest ``4k + 1`` at or above it and the
  extra frames are dropped.
- Sizes: as for images, the model generates at the nearest size it supports (multiples of 16,
  within its area limit) and the frames are resized to the requested size when the two differ.
- Output: an H.264 MP4 (:meth:`openfal.Video.from_frames`) at the requested frame rate, with
  its width, height, fps, frame count and duration. Every step reports progress and is a
  cancellation point; the same seed and input give the same video.
- Safety: no checker runs (``notice`` says so), and random test weights make noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

import openfal
from openfal.app.media import rgb24
from openfal.models.flux import DiffusersApp, LoadedPipeline, fit, seeded_call

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# The frames a video VAE packs into one latent frame (Wan, HunyuanVideo's VAE in Kandinsky 5).
TEMPORAL_COMPRESSION = 4
MAX_VIDEO_SIDE = 2048
VIDEO_NOISE_NOTICE = "These weights are random (a test model): the video is noise."
VIDEO_NO_SAFETY_CHECK = "No safety checker ran: nothing was filtered."

AspectRatio = Literal["16:9", "9:16", "1:1"]


class VideoSize(BaseModel):
    width: int = Field(default=832, gt=0, le=MAX_VIDEO_SIDE, description=(
        "Width in pixels. The model generates at the nearest size it supports and the "
        "frames are resized to exactly this width."))
    height: int = Field(default=480, gt=0, le=MAX_VIDEO_SIDE, description=(
        "Height in pixels, honoured exactly as the width is."))


class VideoTimings(BaseModel):
    inference: float = Field(description="Seconds spent generating (encoding excluded).")


class VideoOutput(BaseModel):
    video: openfal.Video = Field(description="The generated video (H.264 MP4).")
    seed: int = Field(description="The seed used, to reproduce the video.")
    prompt: str
    timings: VideoTimings
    notice: str = Field(description=(
        "What the result does not show: no safety check, random test weights."))


def generation_frames(num_frames: int) -> int:
    """The smallest frame count a 4x-in-time video VAE makes (``4k + 1``) that is at least
    ``num_frames``."""
    return math.ceil((num_frames - 1) / TEMPORAL_COMPRESSION) * TEMPORAL_COMPRESSION + 1


@dataclass
class GeneratedVideo:
    frames: list[PILImage]
    seed: int
    seconds: float
    noise: bool

    def result(self, prompt: str, fps: float) -> VideoOutput:
        """The frames encoded, stored (or inlined for ``sync_mode``) and described."""
        name = f"{'random-noise-' if self.noise else ''}video.mp4"
        notices = [VIDEO_NO_SAFETY_CHECK, *([VIDEO_NOISE_NOTICE] if self.noise else [])]
        return VideoOutput(video=openfal.Video.from_frames(self.frames, fps, file_name=name),
                           seed=self.seed, prompt=prompt,
                           timings=VideoTimings(inference=self.seconds),
                           notice=" ".join(notices))


class VideoDiffusionApp(DiffusersApp):
    """A diffusers text/image-to-video app: pipelines loaded once per runner, generation
    with exact frame counts and sizes (see the module docstring)."""

    request_timeout = 3600
    runtime_modules = ("torch", "diffusers", "transformers", "av")

    def generate_video(self, loaded: LoadedPipeline, pipeline: Any, call: dict[str, Any], *,
                       seed: int | None, steps: int, num_frames: int,
                       output_size: tuple[int, int], loras: Sequence[Any] | None = None
                       ) -> GeneratedVideo:
        """``pipeline`` run with ``call`` (which holds everything but the frame count, the
        generator and the callback) for ``num_frames`` frames at ``output_size``."""
        call = {**call, "num_frames": generation_frames(num_frames), "output_type": "np"}
        output, [seed], seconds = seeded_call(loaded, pipeline, call, seeds=[seed],
                                              steps=steps, loras=loras,
                                              noise_notice=VIDEO_NOISE_NOTICE)
        frames = [fit(to_pil(frame), output_size) for frame in output.frames[0][:num_frames]]
        return GeneratedVideo(frames, seed, seconds, loaded.noise)


def to_pil(frame: Any) -> PILImage:
    """An ``H x W x 3`` float frame in [0, 1] (diffusers' ``output_type="np"``) as RGB."""
    from PIL import Image as PIL

    return PIL.fromarray(rgb24(frame), "RGB")
