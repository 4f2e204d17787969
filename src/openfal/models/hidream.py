"""HiDream-I1 Full: ``fal-ai/hidream-i1-full``, with exactly the model page's input schema and,
as its page gives no output schema, FLUX's (images, timings, seed, has_nsfw_concepts, prompt).

diffusers' ``HiDreamImagePipeline`` on ``HiDream-ai/HiDream-I1-Full``. The published repository
has no Llama: its fourth text encoder and tokenizer come from
``meta-llama/Meta-Llama-3.1-8B-Instruct``, found the same way (models dir, then the Hugging Face
cache). A folder that has ``text_encoder_4`` itself (``openfal models make-tiny hidream DIR``)
needs nothing else.

The pipeline always generates about one megapixel at the requested aspect ratio (sides
multiples of 16); the images are resized to exactly the requested ``image_size`` (default
1024x1024). ``guidance_scale`` above 1 runs classifier-free guidance with ``negative_prompt``.
Seeds, steps, previews for streaming callers, LoRAs (``weight_name`` is for Hugging Face
repositories, which openfal does not download: ``path`` must name the file) and the safety
report are as in :mod:`openfal.models.flux`.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import openfal
from openfal.catalog.schemas import hidream_i1_full as pages
from openfal.models.flux import (
    DiffusersApp,
    check_generation_input,
    decode_preview,
    requested_size,
    with_safety_report,
)
from openfal.models.weights import device_and_dtype, require_model

HIDREAM = "HiDream-ai/HiDream-I1-Full"
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
DEFAULT_SIZE = (1024, 1024)

HidreamOutput = with_safety_report(pages.HidreamI1FullOutput)


class HidreamI1Full(DiffusersApp):
    """``fal-ai/hidream-i1-full``: HiDream-I1 Full text-to-image with LoRAs."""

    app_owner = "fal-ai"
    app_name = "hidream-i1-full"
    runtime_modules = ("torch", "diffusers", "transformers", "peft")
    pipeline_classes = ("HiDreamImagePipeline",)

    @openfal.endpoint("/")
    def generate_image(self, input: pages.HidreamI1FullInput) -> HidreamOutput:
        check_generation_input(input)
        size = requested_size(input.image_size, default=DEFAULT_SIZE)
        loaded = self.loaded(HIDREAM, load_hidream)
        pipeline = loaded.pipeline
        call = {"prompt": input.prompt, "negative_prompt": input.negative_prompt,
                "width": size[0], "height": size[1],
                "num_inference_steps": input.num_inference_steps,
                "guidance_scale": input.guidance_scale,
                "num_images_per_prompt": input.num_images}
        generated = self.generate(loaded, pipeline, call, seed=input.seed,
                                  steps=input.num_inference_steps, output_size=size,
                                  loras=input.loras, preview=partial(decode_preview, pipeline))
        return generated.result(HidreamOutput, input.prompt, input.output_format)


def load_hidream() -> Any:
    """The HiDream pipeline, with the Llama from its own folder when HiDream's has none."""
    from diffusers import HiDreamImagePipeline

    path = require_model(HIDREAM)
    _, dtype = device_and_dtype()
    if (path / "text_encoder_4").is_dir():
        return HiDreamImagePipeline.from_pretrained(path, dtype=dtype)
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    llama = require_model(LLAMA)
    return HiDreamImagePipeline.from_pretrained(
        path, dtype=dtype, tokenizer_4=PreTrainedTokenizerFast.from_pretrained(llama),
        text_encoder_4=LlamaForCausalLM.from_pretrained(
            llama, output_hidden_states=True, output_attentions=True, dtype=dtype))
