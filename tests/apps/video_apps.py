"""Apps returning video and audio outputs, for tests/test_video.py."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

import openfal


class ClipInput(BaseModel):
    num_frames: int = Field(default=9, ge=1, le=120)
    fps: float = Field(default=8, gt=0, le=60)
    width: int = Field(default=64, ge=2, le=512)
    height: int = Field(default=48, ge=2, le=512)
    float_frames: bool = Field(default=False, description=(
        "Frames as floats in [0, 1] (diffusers' output_type='np') instead of PIL images."))
    sync_mode: bool = False


class ClipOutput(BaseModel):
    video: openfal.Video


def clip_frames(input: ClipInput) -> list:
    """Frame i is a flat grey of level 20 * i (mod 256), so decoded frames can be told apart."""
    import numpy as np
    from PIL import Image

    levels = [(20 * index) % 256 for index in range(input.num_frames)]
    if input.float_frames:
        return [np.full((input.height, input.width, 3), level / 255, dtype=np.float32)
                for level in levels]
    return [Image.new("RGB", (input.width, input.height), (level,) * 3) for level in levels]


class ToneInput(BaseModel):
    seconds: float = Field(default=0.5, gt=0, le=10)
    sample_rate: int = Field(default=16000, ge=8000, le=48000)


class ToneOutput(BaseModel):
    audio: openfal.Audio


def tone_wav(seconds: float, sample_rate: int) -> bytes:
    """A 440 Hz sine as a 16-bit mono WAV file."""
    from openfal.models.speech import to_wav

    count = round(seconds * sample_rate)
    samples = b"".join(
        round(12000 * math.sin(2 * math.pi * 440 * i / sample_rate)).to_bytes(2, "little",
                                                                               signed=True)
        for i in range(count))
    return to_wav(samples, sample_rate)


class Media(openfal.App):
    """``openfal/av/clip``: a generated clip; ``openfal/av/tone``: a sine tone."""

    app_name = "av"
    keep_alive = 30

    @openfal.endpoint("/clip")
    def clip(self, input: ClipInput) -> ClipOutput:
        return ClipOutput(video=openfal.Video.from_frames(clip_frames(input), input.fps))

    @openfal.endpoint("/tone")
    def tone(self, input: ToneInput) -> ToneOutput:
        return ToneOutput(audio=openfal.Audio.from_wav(tone_wav(input.seconds,
                                                                input.sample_rate)))
