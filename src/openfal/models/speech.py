"""Offline speech: text to speech with espeak-ng, speech to text with pocketsphinx.

espeak-ng comes from the ``espeakng-loader`` wheel (its own ``libespeak-ng`` and voice data),
driven through ctypes. The library keeps one global state per process and is not thread-safe,
so every call into it holds ``_ESPEAK_LOCK`` and it is initialised once.

pocketsphinx ships a small US-English model. It recognises espeak's robotic voice only roughly:
expect some of the words back, not a verbatim transcript.
"""

from __future__ import annotations

import ctypes
import io
import threading
import wave
from functools import cache
from typing import Any

SAMPLE_WIDTH = 2  # bytes: 16-bit PCM
STT_SAMPLE_RATE = 16_000  # what pocketsphinx's bundled model expects
STT_SILENCE_PAD_S = 0.3  # silence around the speech helps the recogniser find its edges

MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450
MIN_PITCH = 0
MAX_PITCH = 100
DEFAULT_PITCH = 50

# espeak-ng's C constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_ESPEAK_LOCK = threading.Lock()


class _EspeakVoice(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


class _Espeak:
    """The process's one espeak-ng engine. Use only while holding ``_ESPEAK_LOCK``."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        _declare_signatures(self.lib)
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate: int = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise from {data_path!r}")
        self._chunks: list[bytes] = []
        # espeak-ng keeps only a raw pointer to the callback: it must stay referenced here.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voices: tuple[str, ...] = _language_tags(self.lib)

    def _collect(self, samples: Any, count: int, _events: Any) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(samples, count * SAMPLE_WIDTH))
        return 0  # carry on synthesising

    def synthesize(self, text: str, voice: str, words_per_minute: int, pitch: int) -> bytes:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"unknown voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, pitch, 0)
        encoded = text.encode() + b"\0"
        self._chunks = []
        status = self.lib.espeak_Synth(
            encoded, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
        )
        if status != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to synthesise (error {status})")
        self.lib.espeak_Synchronize()
        return b"".join(self._chunks)


@cache
def _engine() -> _Espeak:
    return _Espeak()


def _declare_signatures(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))


def _language_tags(lib: ctypes.CDLL) -> tuple[str, ...]:
    """Every language tag of every installed voice (``en``, ``en-us``, ``fr``, ...), sorted."""
    tags: set[str] = set()
    voices = lib.espeak_ListVoices(None)
    index = 0
    while voices[index]:
        tags.update(_voice_languages(voices[index].contents.languages))
        index += 1
    return tuple(sorted(tags))


def _voice_languages(address: int) -> list[str]:
    """Decode espeak's language list: (priority byte, NUL-terminated tag)* ended by a 0 byte."""
    tags = []
    while ctypes.string_at(address, 1) != b"\0":
        tag = ctypes.string_at(address + 1)
        tags.append(tag.decode())
        address += len(tag) + 2
    return tags


def list_voices() -> list[str]:
    """The voice names ``synthesize`` accepts: espeak-ng language tags such as ``en-us``."""
    with _ESPEAK_LOCK:
        return list(_engine().voices)


def synthesize(
    text: str,
    *,
    voice: str = "en-us",
    words_per_minute: int = 175,
    pitch: int | None = None,
) -> tuple[bytes, int]:
    """Speak ``text``; returns 16-bit mono PCM (native byte order) and its sample rate.

    ``voice`` is one of ``list_voices()``. ``pitch`` runs from 0 to 100 (``None``: espeak's
    default, 50). Raises ValueError for empty text, an unknown voice or an out-of-range setting.
    espeak-ng's pitch flutter carries on from one call to the next, so the same text can come
    out a few samples different each time.
    """
    if not text.strip():
        raise ValueError("text to synthesize is empty")
    if not MIN_WORDS_PER_MINUTE <= words_per_minute <= MAX_WORDS_PER_MINUTE:
        raise ValueError(
            f"words_per_minute must be {MIN_WORDS_PER_MINUTE}-{MAX_WORDS_PER_MINUTE},"
            f" not {words_per_minute}"
        )
    pitch = DEFAULT_PITCH if pitch is None else pitch
    if not MIN_PITCH <= pitch <= MAX_PITCH:
        raise ValueError(f"pitch must be {MIN_PITCH}-{MAX_PITCH}, not {pitch}")
    with _ESPEAK_LOCK:
        engine = _engine()
        if voice.lower() not in engine.voices:
            raise ValueError(f"unknown voice {voice!r}; list_voices() gives the available ones")
        pcm = engine.synthesize(text, voice, words_per_minute, pitch)
        return pcm, engine.sample_rate


def to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """Wrap 16-bit mono PCM in a WAV container."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


def transcribe(wav_bytes: bytes) -> str:
    """Recognise English speech in a 16-bit PCM WAV (any rate, mono or stereo) with pocketsphinx.

    Raises ValueError when ``wav_bytes`` is not such a WAV.
    """
    from pocketsphinx import Decoder

    pcm = _to_stt_pcm(wav_bytes)
    decoder = Decoder(samprate=STT_SAMPLE_RATE, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def _to_stt_pcm(wav_bytes: bytes) -> bytes:
    """16 kHz mono 16-bit PCM, padded with silence, as the recogniser wants it."""
    import numpy as np

    channels, rate, frames = _read_wav(wav_bytes)
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels).mean(axis=1)
    samples = _resample_linear(samples, rate, STT_SAMPLE_RATE)
    pad = np.zeros(int(STT_SILENCE_PAD_S * STT_SAMPLE_RATE))
    padded = np.concatenate([pad, samples, pad])
    return np.round(padded).clip(-32768, 32767).astype("<i2").tobytes()


def _read_wav(wav_bytes: bytes) -> tuple[int, int, bytes]:
    """(channels, sample rate, frames) of a 16-bit PCM WAV; ValueError for anything else."""
    try:
        with wave.open(io.BytesIO(wav_bytes)) as wav:
            if wav.getsampwidth() != SAMPLE_WIDTH:
                raise ValueError(f"expected 16-bit PCM WAV, got {8 * wav.getsampwidth()}-bit")
            return wav.getnchannels(), wav.getframerate(), wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(f"not a readable WAV file: {error}") from error


def _resample_linear(samples: Any, rate: int, target_rate: int) -> Any:
    """Linear-interpolation resampling; plenty for speech recognition."""
    import numpy as np

    if rate == target_rate or len(samples) == 0:
        return samples
    count = round(len(samples) * target_rate / rate)
    positions = np.arange(count) * (rate / target_rate)
    return np.interp(positions, np.arange(len(samples)), samples)
