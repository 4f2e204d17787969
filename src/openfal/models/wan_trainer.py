"""Wan 2.1 LoRA training: ``fal-ai/wan-trainer/t2v`` (T2V 1.3B), ``/t2v-14b`` (T2V 14B) and
``/i2v-720p`` (I2V 14B 720P), with exactly the model pages' schemas.

One App class per base model (each its own runner pool), all under the app id
``fal-ai/wan-trainer``. A run:

1. Unpacks ``training_data_url`` (fetched by the runner like every ``*_url`` input): a zip or
   tar archive (gzip, bzip2 and xz tars too) of images (``.png``, ``.jpg``, ``.jpeg``,
   ``.webp``) and clips (``.mp4``, ``.mov``, ``.webm``), each captioned by the ``.txt`` file of
   the same name beside it. A missing or empty caption is the trigger phrase; ``[trigger]`` in
   a caption is replaced by it, and a caption that does not contain it gets it in front.
   Hidden files and ``__MACOSX`` are skipped; the archive is bounded in members, examples and
   unpacked bytes. An archive that is none of this (no images or clips, a file that does not
   open) is a 422 on ``training_data_url``, before any model is loaded.
2. Loads the base pipeline (found by :mod:`openfal.models.weights`; never downloaded) once per
   runner, and encodes every example without gradients: the caption with the pipeline's own
   text encoder (as generation does), the frames with the VAE into normalised latents. Images
   are one-frame videos; clips are resampled to Wan's 16 fps (``auto_scale_input``: stretched
   to exactly 81 frames over the whole clip, as the page says), at most 81 frames, cut to the
   ``4k + 1`` frames the VAE takes. Each example keeps its aspect ratio at no more than the
   model's area (480p for T2V, 720p for I2V), sides multiples of 16. For image-to-video the
   first frame conditions the clip (its latents and mask, and the CLIP image embedding when
   the checkpoint has an image encoder), as in ``WanImageToVideoPipeline``.
3. Adds a peft LoRA (rank and alpha :data:`LORA_RANK`, float32 weights) to the transformer's
   attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, self and cross
   attention) and trains it with the rectified-flow objective Wan is trained with: an example
   at random, noise, ``sigma`` drawn uniformly and shifted by the scheduler's shift,
   ``x_t = (1 - sigma) x0 + sigma noise``, the transformer asked for ``noise - x0`` at timestep
   ``1000 sigma``, mean squared error; AdamW at ``learning_rate``, gradients clipped at 1.
   Every step logs ``step N/M loss X`` and reports progress, and is a cancellation point
   (encoding is too). Training is seeded: the same data and settings give the same LoRA.
4. Returns ``lora_file``: the LoRA as safetensors in diffusers' format
   (``transformer.blocks.0.attn1.to_q.lora_A.weight``, what ``WanPipeline.save_lora_weights``
   writes and ``load_lora_weights`` reads), to pass as ``loras: [{path, scale}]`` to the
   matching ``openfal/wan/...`` endpoint; and ``config_file``: JSON saying how it was trained
   and where to use it.

The transformer is the runner's shared copy: the adapter is removed after each run, cancelled
or not, so the next run starts from the base weights.
"""

from __future__ import annotations

import json
import math
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, ClassVar

import openfal
from openfal.app.context import current_request
from openfal.app.errors import FieldException
from openfal.catalog.apps import TRAINING_TIMEOUT
from openfal.catalog.schemas import wan_trainer as pages
from openfal.models.flux import DiffusersApp, fit, generation_size, max_sequence_length
from openfal.models.video import TEMPORAL_COMPRESSION
from openfal.models.wan import (
    I2V_14B_720P,
    T2V_1_3B,
    T2V_14B,
    WAN_MAX_AREA,
    WAN_NATIVE_FPS,
    WAN_PRESETS,
    load_wan,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from openfal.models.flux import LoadedPipeline

FIELD = "training_data_url"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".webm"})
CAPTION_EXTENSION = ".txt"
TRIGGER_PLACEHOLDER = "[trigger]"
MAX_ARCHIVE_MEMBERS = 20_000
MAX_EXAMPLES = 1_000
MAX_UNPACKED_BYTES = 8 * 1024**3
MAX_CAPTION_BYTES = 64 * 1024
MAX_TRAINING_STEPS = 100_000
MAX_LEARNING_RATE = 1.0
# Frames decoded from one clip at most (a very long clip is cut there).
MAX_DECODED_FRAMES = 20_000
CHUNK_BYTES = 1024 * 1024

CLIP_FRAMES = 81
AREA_480P = math.prod(WAN_PRESETS["480p"]["16:9"])
AREA_720P = WAN_MAX_AREA
LORA_RANK = 32
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "openfal_training"
LORA_FILE_NAME = "wan-lora.safetensors"
CONFIG_FILE_NAME = "wan-lora-config.json"
# Used when a scheduler states no shift of its own (Wan 2.1's default flow shift).
DEFAULT_FLOW_SHIFT = 3.0
NUM_TRAIN_TIMESTEPS = 1000
TRAINING_SEED = 0
WEIGHT_DECAY = 1e-4
MAX_GRAD_NORM = 1.0


# The training data


@dataclass(frozen=True)
class Example:
    """One image or clip of the archive, unpacked to ``path``, with its caption."""

    name: str
    path: Path
    is_video: bool
    caption: str


def unpack_training_data(archive: Path, dest: Path, trigger_phrase: str) -> list[Example]:
    """The examples of a zip or tar ``archive``, their media unpacked into ``dest``; a 422 on
    ``training_data_url`` when it is not an archive of images or clips."""
    media: list[tuple[str, str, Path, bool]] = []  # caption key, name, unpacked, clip?
    captions: dict[str, str] = {}
    unpacked = 0
    for index, (name, size, open_member) in enumerate(_members(archive)):
        if index >= MAX_ARCHIVE_MEMBERS:
            raise _bad_data(f"the archive has more than {MAX_ARCHIVE_MEMBERS} files")
        path = PurePosixPath(name.replace("\\", "/"))
        if _skipped(path):
            continue
        suffix = path.suffix.lower()
        key = str(path.with_suffix(""))
        if suffix == CAPTION_EXTENSION:
            if size > MAX_CAPTION_BYTES:
                raise _bad_data(f"the caption {name[:200]} is over {MAX_CAPTION_BYTES} bytes")
            with _reading(name[:200]), open_member() as source:
                captions[key] = source.read(MAX_CAPTION_BYTES).decode("utf-8", "replace")
        elif suffix in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
            if len(media) >= MAX_EXAMPLES:
                raise _bad_data(f"the archive has more than {MAX_EXAMPLES} images and clips")
            target = dest / f"{len(media)}{suffix}"
            with _reading(name[:200]), open_member() as source, target.open("wb") as out:
                unpacked += _copy_bounded(source, out, MAX_UNPACKED_BYTES - unpacked)
            media.append((key, name, target, suffix in VIDEO_EXTENSIONS))
    if not media:
        raise _bad_data("the archive holds no images or clips (" + ", ".join(
            sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)) + ")")
    return [Example(name, target, is_video, caption_for(captions.get(key), trigger_phrase))
            for key, name, target, is_video in sorted(media, key=lambda item: item[1])]


def caption_for(caption: str | None, trigger_phrase: str) -> str:
    """The prompt an example is trained with (see the module docstring)."""
    trigger = trigger_phrase.strip()
    text = " ".join((caption or "").split())
    if not text:
        return trigger
    if TRIGGER_PLACEHOLDER in text or not trigger:
        return " ".join(text.replace(TRIGGER_PLACEHOLDER, trigger).split())
    return text if trigger in text else f"{trigger}, {text}"


Member = tuple[str, int, Callable[[], IO[bytes]]]


def _members(archive: Path) -> Iterator[Member]:
    """Name, size and an opener of each regular file in a zip or tar archive."""
    with _reading("the archive"):
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                for info in zipped.infolist():
                    if not info.is_dir():
                        yield info.filename, info.file_size, partial(zipped.open, info)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tarred:
                for info in tarred:
                    if info.isfile():
                        yield info.name, info.size, partial(_tar_member, tarred, info)
        else:
            raise _bad_data("not a zip or tar archive")


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Errors of a damaged archive as a 422 on the field."""
    try:
        yield
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, NotImplementedError,
            EOFError, OSError, ValueError, zlib.error) as exc:
        raise _bad_data(f"{what} cannot be read: {str(exc)[:200]}") from None


def _tar_member(tarred: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    extracted = tarred.extractfile(info)
    if extracted is None:
        raise _bad_data(f"{info.name[:200]} cannot be read from the archive")
    return extracted


def _skipped(path: PurePosixPath) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _copy_bounded(source: IO[bytes], out: IO[bytes], budget: int) -> int:
    """Copy ``source`` to ``out``, at most ``budget`` bytes (a 422 past it); bytes copied."""
    copied = 0
    while chunk := source.read(CHUNK_BYTES):
        copied += len(chunk)
        if copied > budget:
            raise _bad_data(f"the archive unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        out.write(chunk)
    return copied


def _bad_data(message: str) -> FieldException:
    return FieldException(FIELD, message, type="training_data_invalid")


# Frames


def clip_frame_count(count: int) -> int:
    """The largest ``4k + 1`` at most ``count`` (and at most :data:`CLIP_FRAMES`)."""
    count = min(count, CLIP_FRAMES)
    return (count - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1


def example_frames(example: Example, max_area: int, auto_scale: bool) -> list[PILImage]:
    """The RGB frames an example is trained on, at its training size: its aspect ratio, at
    most ``max_area``, sides multiples of 16 (as generation sizes are)."""
    frames = (clip_frames(example, auto_scale) if example.is_video
              else [_open_image(example)])
    size = generation_size(*frames[0].size, max_area=max_area)
    return [fit(frame, size) for frame in frames]


def _open_image(example: Example) -> PILImage:
    from PIL import Image as PIL

    try:
        with PIL.open(example.path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, PIL.DecompressionBombError) as exc:
        raise _bad_data(f"{example.name[:200]} is not an image that can be opened: "
                        f"{str(exc)[:200]}") from None


def clip_frames(example: Example, auto_scale: bool) -> list[PILImage]:
    """A clip's frames at 16 fps from its start (at most 81), or with ``auto_scale`` exactly
    81 frames spread over the whole clip; cut to ``4k + 1``."""
    import av

    try:
        with av.open(str(example.path)) as container:
            stream = container.streams.video[0]
            duration = _duration(container, stream)
            if auto_scale and duration:
                targets = [duration * k / CLIP_FRAMES for k in range(CLIP_FRAMES)]
            else:
                targets = [k / WAN_NATIVE_FPS for k in range(CLIP_FRAMES)]
            frames = _frames_at(container.decode(stream), targets)
    except (av.FFmpegError, IndexError, OSError, ValueError) as exc:
        raise _bad_data(f"{example.name[:200]} is not a clip that can be decoded: "
                        f"{str(exc)[:200]}") from None
    if not frames:
        raise _bad_data(f"{example.name[:200]} has no frames")
    if auto_scale and duration:
        frames += [frames[-1]] * (CLIP_FRAMES - len(frames))
    return frames[:clip_frame_count(len(frames))]


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _frames_at(decoded: Iterator[Any], targets: list[float]) -> list[PILImage]:
    """For each target time (ascending), the last decoded frame at or before it."""
    chosen: list[PILImage] = []
    previous = None
    start: float | None = None
    for count, frame in enumerate(decoded):
        if count >= MAX_DECODED_FRAMES:
            break
        time_s = float(frame.time) if frame.time is not None else count / WAN_NATIVE_FPS
        start = time_s if start is None else start
        while previous is not None and len(chosen) < len(targets) and \
                targets[len(chosen)] < time_s - start:
            chosen.append(previous.to_image().convert("RGB"))
        if len(chosen) == len(targets):
            break
        previous = frame
    if previous is not None and len(chosen) < len(targets):
        chosen.append(previous.to_image().convert("RGB"))
    return chosen


# Encoding


@dataclass
class EncodedExample:
    """What one training step needs of an example, kept on the CPU."""

    latents: Any
    prompt_embeds: Any
    condition: Any = None
    image_embeds: Any = None


def encode_examples(pipeline: Any, examples: list[Example], max_area: int, auto_scale: bool
                    ) -> list[EncodedExample]:
    """Each example's normalised latents and caption embedding (and, for image-to-video,
    its first-frame condition), without gradients."""
    import torch

    image_to_video = is_image_to_video(pipeline)
    device = pipeline._execution_device
    encoded = []
    with torch.no_grad():
        for example in examples:
            _raise_if_cancelled()
            frames = example_frames(example, max_area, auto_scale)
            video = _video_tensor(frames).to(device, pipeline.vae.dtype)
            latents = _normalise(pipeline, pipeline.vae.encode(video).latent_dist.mode())
            prompt_embeds, _ = pipeline.encode_prompt(
                example.caption, do_classifier_free_guidance=False, device=device,
                max_sequence_length=max_sequence_length(pipeline.tokenizer))
            item = EncodedExample(latents.float().cpu(), prompt_embeds.cpu())
            if image_to_video:
                item.condition, item.image_embeds = _first_frame_condition(
                    pipeline, frames, latents)
            encoded.append(item)
    return encoded


def is_image_to_video(pipeline: Any) -> bool:
    """Whether the transformer takes a condition beside the noisy latents (Wan I2V)."""
    return pipeline.transformer.config.in_channels != pipeline.vae.config.z_dim


def _video_tensor(frames: list[PILImage]) -> Any:
    """RGB frames as a ``1 x 3 x T x H x W`` tensor in [-1, 1]."""
    import numpy as np
    import torch

    pixels = np.stack([np.asarray(frame, dtype=np.uint8) for frame in frames])
    video = torch.from_numpy(pixels).float().div(127.5).sub(1.0)
    return video.permute(3, 0, 1, 2).unsqueeze(0)


def _normalise(pipeline: Any, latents: Any) -> Any:
    """VAE latents as the transformer sees them (the inverse of the pipelines' decoding)."""
    import torch

    config = pipeline.vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
    std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
    return (latents - mean.to(latents)) / std.to(latents)


def _first_frame_condition(pipeline: Any, frames: list[PILImage], latents: Any
                           ) -> tuple[Any, Any]:
    """The first frame's condition (mask and latents) and CLIP embedding, as
    ``WanImageToVideoPipeline`` makes them for generation."""
    import torch

    width, height = frames[0].size
    device = pipeline._execution_device
    image = pipeline.video_processor.preprocess(frames[0], height=height, width=width)
    _, condition = pipeline.prepare_latents(
        image.to(device, torch.float32), 1, pipeline.vae.config.z_dim, height, width,
        len(frames), torch.float32, device, None, torch.zeros_like(latents, dtype=torch.float32))
    image_embeds = None
    if pipeline.transformer.config.image_dim is not None and \
            getattr(pipeline, "image_encoder", None) is not None:
        image_embeds = pipeline.encode_image(frames[0], device).cpu()
    return condition.float().cpu(), image_embeds


# Training


@dataclass
class TrainingRun:
    """A LoRA trained on a pipeline's transformer, and how it went."""

    state_dict: dict[str, Any]
    losses: list[float]
    seconds: float


def train_lora(pipeline: Any, examples: list[EncodedExample], steps: int,
               learning_rate: float, rank: int = LORA_RANK) -> TrainingRun:
    """Train a LoRA on ``pipeline``'s transformer for ``steps`` steps; its weights (peft
    names, in the transformer's dtype) and the loss of each step. The adapter is removed
    from the transformer afterwards, whatever happens."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = pipeline.transformer
    device = pipeline._execution_device
    dtype = transformer.dtype
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                        target_modules=list(TARGET_MODULES))
    generator = torch.Generator(device="cpu").manual_seed(TRAINING_SEED)
    shift = flow_shift(pipeline.scheduler)
    started = time.perf_counter()
    losses: list[float] = []
    try:
        transformer.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TRAINING_SEED)
            transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
        params = [param for param in transformer.parameters() if param.requires_grad]
        for param in params:
            param.data = param.data.float()
        optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=WEIGHT_DECAY)
        if str(device).startswith("cuda"):
            transformer.enable_gradient_checkpointing()
        transformer.train()
        order: list[int] = []
        for step in range(1, steps + 1):
            if not order:
                order = torch.randperm(len(examples), generator=generator).tolist()
            loss = _training_step(transformer, examples[order.pop()], shift, generator,
                                  device, dtype)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            value = float(loss.detach())
            losses.append(value)
            print(f"step {step}/{steps} loss {value:.6f}")
            openfal.progress(step, steps, f"loss {value:.6f}")
        state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
        state = {name: tensor.detach().to("cpu", dtype).contiguous()
                 for name, tensor in state.items()}
        return TrainingRun(state, losses, time.perf_counter() - started)
    finally:
        transformer.eval()
        if getattr(transformer, "gradient_checkpointing", False):
            transformer.disable_gradient_checkpointing()
        if getattr(transformer, "peft_config", None):
            transformer.unload_lora()
        transformer.requires_grad_(False)


def flow_shift(scheduler: Any) -> float:
    """The timestep shift of the checkpoint's scheduler (``flow_shift`` or ``shift``)."""
    for name in ("flow_shift", "shift"):
        value = scheduler.config.get(name)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return DEFAULT_FLOW_SHIFT


def _training_step(transformer: Any, example: EncodedExample, shift: float,
                   generator: Any, device: Any, dtype: Any) -> Any:
    """The flow-matching loss of one noised example."""
    import torch

    x0 = example.latents
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    u = torch.rand((1,), generator=generator, dtype=torch.float32)
    sigma = shift * u / (1 + (shift - 1) * u)
    noisy = (1 - sigma) * x0 + sigma * noise
    target = (noise - x0).to(device)
    hidden = noisy if example.condition is None else torch.cat([noisy, example.condition], 1)
    extra = ({} if example.image_embeds is None else
             {"encoder_hidden_states_image": example.image_embeds.to(device, dtype)})
    prediction = transformer(
        hidden_states=hidden.to(device, dtype), timestep=(sigma * NUM_TRAIN_TIMESTEPS).to(device),
        encoder_hidden_states=example.prompt_embeds.to(device, dtype), return_dict=False,
        **extra)[0]
    return torch.nn.functional.mse_loss(prediction.float(), target)


def save_lora(state_dict: dict[str, Any], directory: Path) -> Path:
    """The peft weights written as diffusers' Wan LoRA safetensors; the file's path."""
    from diffusers import WanPipeline

    WanPipeline.save_lora_weights(directory, transformer_lora_layers=state_dict,
                                  weight_name=LORA_FILE_NAME, safe_serialization=True)
    return directory / LORA_FILE_NAME


def _raise_if_cancelled() -> None:
    ctx = current_request()
    if ctx is not None:
        ctx.raise_if_cancelled()


# The apps


def check_training_input(input: Any) -> None:
    """422s on the fields whose bounds the page's schema does not state."""
    if not 1 <= input.number_of_steps <= MAX_TRAINING_STEPS:
        raise FieldException("number_of_steps", f"must be between 1 and {MAX_TRAINING_STEPS}",
                             type="value_error")
    rate = input.learning_rate
    if not (math.isfinite(rate) and 0 < rate <= MAX_LEARNING_RATE):
        raise FieldException("learning_rate",
                             f"must be above 0 and at most {MAX_LEARNING_RATE}",
                             type="value_error")


def archive_path(value: Any) -> Path:
    path = getattr(value, "path", None)
    if path is None:  # the runner fetches every *_url input; this is a safety net
        raise _bad_data("the training data was not fetched")
    return Path(path)


class WanTrainerBase(DiffusersApp):
    """LoRA training of one Wan 2.1 checkpoint (see the module docstring) under the app
    ``fal-ai/wan-trainer``; each subclass serves one checkpoint at one path."""

    app_owner = "fal-ai"
    app_name = "wan-trainer"

    request_timeout = TRAINING_TIMEOUT
    runtime_modules = ("torch", "diffusers", "transformers", "peft", "av")
    pipeline_classes = ("WanPipeline",)
    hub_id: ClassVar[str] = ""
    inference_endpoint: ClassVar[str] = ""
    max_area: ClassVar[int] = AREA_480P

    def train(self, input: Any, output_model: type[Any]) -> Any:
        check_training_input(input)
        with tempfile.TemporaryDirectory(prefix="openfal-wan-training-") as scratch:
            data = Path(scratch) / "data"
            data.mkdir()
            examples = unpack_training_data(archive_path(input.training_data_url), data,
                                            input.trigger_phrase)
            videos = sum(example.is_video for example in examples)
            print(f"training data: {len(examples) - videos} images, {videos} clips")
            loaded = self.loaded(self.hub_id, partial(load_wan, self.hub_id))
            with loaded.lock:
                run = self._train_locked(loaded, examples, input)
            out = Path(scratch) / "out"
            out.mkdir()
            lora_path = save_lora(run.state_dict, out)
            lora_bytes = lora_path.read_bytes()
        lora_file = openfal.File.from_bytes(lora_bytes, "application/octet-stream",
                                            LORA_FILE_NAME)
        config = self.training_config(input, examples, run, lora_file.url, len(lora_bytes))
        config_file = openfal.File.from_bytes(json.dumps(config, indent=2).encode(),
                                              "application/json", CONFIG_FILE_NAME)
        return output_model.model_validate({"lora_file": lora_file.model_dump(),
                                            "config_file": config_file.model_dump()})

    def _train_locked(self, loaded: LoadedPipeline, examples: list[Example],
                      input: Any) -> TrainingRun:
        pipeline = loaded.pipeline
        if loaded.noise:
            print("These weights are random (a test model): the LoRA learns noise.")
        encoded = encode_examples(pipeline, examples, self.max_area,
                                  bool(input.auto_scale_input))
        print(f"training a rank {LORA_RANK} LoRA of {self.hub_id} for "
              f"{input.number_of_steps} steps at learning rate {input.learning_rate:g}")
        run = train_lora(pipeline, encoded, input.number_of_steps, input.learning_rate)
        print(f"trained in {run.seconds:.1f} s, final loss {run.losses[-1]:.6f}")
        return run

    def training_config(self, input: Any, examples: list[Example], run: TrainingRun,
                        lora_url: str, lora_size: int) -> dict[str, Any]:
        lora = {"path": lora_url if not lora_url.startswith("data:") else LORA_FILE_NAME,
                "scale": 1.0}
        return {
            "base_model": self.hub_id,
            "inference_endpoint": self.inference_endpoint,
            "loras": [lora],
            "trigger_phrase": input.trigger_phrase,
            "lora": {"format": "diffusers", "rank": LORA_RANK, "alpha": LORA_RANK,
                     "target_modules": list(TARGET_MODULES), "file_size": lora_size},
            "training": {
                "number_of_steps": input.number_of_steps,
                "learning_rate": input.learning_rate,
                "auto_scale_input": input.auto_scale_input,
                "optimizer": "AdamW", "weight_decay": WEIGHT_DECAY,
                "objective": "flow matching (predict noise - x0)",
                "max_area": self.max_area, "seed": TRAINING_SEED,
                "examples": len(examples),
                "videos": sum(example.is_video for example in examples),
                "captions": [example.caption for example in examples][:100],
                "final_loss": run.losses[-1], "seconds": round(run.seconds, 3),
            },
        }


class WanTrainerT2V(WanTrainerBase):
    """``fal-ai/wan-trainer/t2v``: LoRAs of Wan 2.1 T2V 1.3B, for ``openfal/wan/t2v``."""

    hub_id = T2V_1_3B
    inference_endpoint = "openfal/wan/t2v"

    @openfal.endpoint("/t2v")
    def t2v(self, input: pages.WanTrainerT2vInput) -> pages.WanTrainerT2vOutput:
        return self.train(input, pages.WanTrainerT2vOutput)


class WanTrainerT2V14B(WanTrainerBase):
    """``fal-ai/wan-trainer/t2v-14b``: LoRAs of Wan 2.1 T2V 14B, for ``openfal/wan/t2v-14b``."""

    hub_id = T2V_14B
    inference_endpoint = "openfal/wan/t2v-14b"

    @openfal.endpoint("/t2v-14b")
    def t2v_14b(self, input: pages.WanTrainerT2v14bInput) -> pages.WanTrainerT2v14bOutput:
        return self.train(input, pages.WanTrainerT2v14bOutput)


class WanTrainerI2V720P(WanTrainerBase):
    """``fal-ai/wan-trainer/i2v-720p``: LoRAs of Wan 2.1 I2V 14B 720P, for
    ``openfal/wan/i2v``; the first frame of each example conditions it."""

    # WanImageToVideoPipeline cleans prompts with ftfy and fails without it.
    runtime_modules = (*WanTrainerBase.runtime_modules, "ftfy")
    pipeline_classes = ("WanImageToVideoPipeline",)
    hub_id = I2V_14B_720P
    inference_endpoint = "openfal/wan/i2v"
    max_area = AREA_720P

    @openfal.endpoint("/i2v-720p")
    def i2v_720p(self, input: pages.WanTrainerI2v720pInput) -> pages.WanTrainerI2v720pOutput:
        return self.train(input, pages.WanTrainerI2v720pOutput)

