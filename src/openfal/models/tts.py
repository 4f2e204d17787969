"""``openfal/tts``: offline text to speech with espeak-ng.

The input and output follow the hosted platform's TTS endpoints: ``text`` plus voice and
speed options in, an ``audio`` file (WAV) out. espeak-ng is a formant synthesiser: robotic,
but intelligible, small and fast, with many languages.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import openfal
from openfal.app.errors import FieldException
from openfal.models.weights import require_runtime

BASE_WORDS_PER_MINUTE = 175


class TTSInput(BaseModel):
    text: str = Field(min_length=1, max_length=5000, description="The text to speak.",
                      examples=["Hello world, this is openfal speaking."])
    voice: str = Field(default="en-us", description=(
        "An espeak-ng voice or language tag, such as en-us, en-gb, de or fr."))
    speed: float = Field(default=1.0, ge=0.5, le=2.0,
                         description="Speaking rate: 1.0 is normal, 2.0 twice as fast.")
    pitch: int = Field(default=50, ge=0, le=100, description="Base pitch, 0 to 100.")


class TTSOutput(BaseModel):
    audio: openfal.Audio = Field(description="The speech, as a 16-bit mono WAV file.")


class TTS(openfal.App):
    app_name = "tts"
    keep_alive = 300
    max_multiplexing = 4

    def setup(self) -> None:
        require_runtime("espeakng_loader")
        from openfal.models import speech

        self.voices = set(speech.list_voices())

    @openfal.endpoint("/")
    def run(self, input: TTSInput) -> TTSOutput:
        from openfal.models import speech

        if input.voice.lower() not in self.voices:
            raise FieldException("voice", f"unknown voice {input.voice!r}; try en-us, en-gb, "
                                 "de, fr, es", type="enum")
        pcm, rate = speech.synthesize(
            input.text, voice=input.voice, pitch=input.pitch,
            words_per_minute=round(BASE_WORDS_PER_MINUTE * input.speed))
        audio = openfal.Audio.from_wav(speech.to_wav(pcm, rate), "speech.wav")
        return TTSOutput(audio=audio)
