"""Kandinsky 5.0 text-to-video: ``fal-ai/kandinsky5/text-to-video``, with exactly the model
page's input schema; the output is the page's ``video`` with what openfal's other video apps
return besides (the video's width, height, fps, frame count and duration; the seed, prompt,
timings and notice).

diffusers' ``Kandinsky5T2VPipeline`` on Kandinsky 5.0 T2V Lite's SFT checkpoints, one for each
``video_length``: ``5s`` runs ``kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers`` and
``10s`` runs ``kandinskylab/Kandinsky-5.0-T2V-Lite-sft-10s-Diffusers``, each found as
:mod:`openfal.models.weights` says and loaded the first time a request asks for its length
(``openfal models make-tiny kandinsky5 DIR`` makes a test model of either). What maps to what:

- ``resolution``: ``WxH``, the video's width and height (768x512, 512x768 or 512x512),
  generated at exactly that size (its sides are multiples of 16).
- ``video_length``: 121 frames (``5s``) or 241 (``10s``) at 24 fps, the rate the model is
  trained at: the ``4k + 1`` frames its VAE makes.
- ``num_inference_steps``: the denoising steps (1 to 100; a 422 on the field otherwise).
- The page has no seed, guidance or negative prompt: each request draws a seed (returned in
  ``seed``), and the pipeline's guidance scale (5) and negative prompt apply, as in
  diffusers' example for the SFT checkpoints.

Progress and cancellation at every step, the MP4 and the notice are as in
:mod:`openfal.models.video`.

The Qwen2.5-VL tokenizer is loaded alone, from the checkpoint's ``tokenizer`` folder: the
checkpoint names Qwen2.5-VL's processor there, whose image and video processors need
torchvision, but text-to-video only ever hands it text (``images=None, videos=None``), which the
tokenizer takes the same way.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pydantic import create_model

import openfal
from openfal.catalog.schemas import kandinsky5 as pages
from openfal.models.flux import MAX_STEPS, check_range
from openfal.models.video import VideoDiffusionApp, VideoOutput, generation_frames
from openfal.models.weights import device_and_dtype, require_model

KANDINSKY5_5S = "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-5s-Diffusers"
KANDINSKY5_10S = "kandinskylab/Kandinsky-5.0-T2V-Lite-sft-10s-Diffusers"
CHECKPOINTS = {"5s": KANDINSKY5_5S, "10s": KANDINSKY5_10S}
KANDINSKY5_FPS = 24

Kandinsky5Output = create_model(
    pages.Kandinsky5TextToVideoOutput.__name__,
    __base__=(VideoOutput, pages.Kandinsky5TextToVideoOutput), __module__=pages.__name__)


def video_size(resolution: str) -> tuple[int, int]:
    """``WxH`` as (width, height)."""
    width, height = resolution.split("x")
    return int(width), int(height)


def video_frames(video_length: str) -> int:
    """The frames of a ``5s`` or ``10s`` video at 24 fps, as the model makes them (``4k + 1``)."""
    return generation_frames(int(video_length.removesuffix("s")) * KANDINSKY5_FPS)


def load_kandinsky5(hub_id: str) -> Any:
    """The checkpoint's pipeline in the runner's dtype, with the Qwen tokenizer alone (see the
    module docstring)."""
    from diffusers import Kandinsky5T2VPipeline
    from transformers import AutoTokenizer

    path = require_model(hub_id)
    _, dtype = device_and_dtype()
    # diffusers refuses a tokenizer in place of the processor a checkpoint names: load without
    # one, then register the tokenizer.
    pipeline = Kandinsky5T2VPipeline.from_pretrained(path, tokenizer=None, dtype=dtype)
    pipeline.register_modules(tokenizer=AutoTokenizer.from_pretrained(path,
                                                                      subfolder="tokenizer"))
    return pipeline


class Kandinsky5(VideoDiffusionApp):
    """``fal-ai/kandinsky5/text-to-video``: Kandinsky 5.0 T2V Lite, 5 or 10 seconds."""

    app_owner = "fal-ai"
    app_name = "kandinsky5"
    pipeline_classes = ("Kandinsky5T2VPipeline",)

    @openfal.endpoint("/text-to-video")
    def text_to_video(self, input: pages.Kandinsky5TextToVideoInput) -> Kandinsky5Output:
        return self.video(input)

    def video(self, input: pages.Kandinsky5TextToVideoInput, seed: int | None = None
              ) -> Kandinsky5Output:
        """``input``'s video, generated from ``seed`` (None, as for every request: one is
        drawn)."""
        check_range("num_inference_steps", input.num_inference_steps, 1, MAX_STEPS)
        hub_id = CHECKPOINTS[input.video_length]
        loaded = self.loaded(hub_id, partial(load_kandinsky5, hub_id))
        size = video_size(input.resolution)
        call = {"prompt": input.prompt, "width": size[0], "height": size[1],
                "num_inference_steps": input.num_inference_steps}
        generated = self.generate_video(
            loaded, loaded.pipeline, call, seed=seed, steps=input.num_inference_steps,
            num_frames=video_frames(input.video_length), output_size=size)
        result = generated.result(input.prompt, KANDINSKY5_FPS)
        return Kandinsky5Output.model_validate(result.model_dump())
