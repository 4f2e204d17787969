"""espeak-ng speech out, pocketsphinx speech back in: the round trip runs fully offline."""

from __future__ import annotations

import io
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from openfal.models.speech import list_voices, synthesize, to_wav, transcribe

pytest.importorskip("espeakng_loader", reason="text to speech needs espeakng-loader")


def _seconds(pcm: bytes, sample_rate: int) -> float:
    return len(pcm) / 2 / sample_rate


def test_synthesize_returns_16_bit_pcm_that_wraps_as_wav() -> None:
    pcm, sample_rate = synthesize("hello world")
    assert sample_rate == 22_050
    assert 0.3 < _seconds(pcm, sample_rate) < 3
    with wave.open(io.BytesIO(to_wav(pcm, sample_rate))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22_050)
        assert wav.readframes(wav.getnframes()) == pcm


# The recogniser is rough on espeak's voice, and espeak's pitch flutter carries over from call to
# call, so the audio of a phrase varies a little. These words came back in every one of dozens of
# tries; "hello world" alone came back only about 70% of the time, "lazy dog" rarely.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello world three four five", "three four five"),
        ("one two three four five six seven eight nine", "three four five"),
        ("two three four five", "two three four five"),
    ],
)
def test_speech_round_trips_through_recognition(text: str, expected: str) -> None:
    pytest.importorskip("pocketsphinx", reason="speech recognition needs pocketsphinx")
    pytest.importorskip("numpy", reason="resampling for recognition needs numpy")
    pcm, sample_rate = synthesize(text)
    assert expected in transcribe(to_wav(pcm, sample_rate))


def test_slower_speech_lasts_longer() -> None:
    slow = _seconds(*synthesize("the quick brown fox", words_per_minute=100))
    fast = _seconds(*synthesize("the quick brown fox", words_per_minute=300))
    assert slow > 1.5 * fast


def test_pitch_changes_the_audio() -> None:
    low, _ = synthesize("hello world", pitch=10)
    high, _ = synthesize("hello world", pitch=90)
    assert low != high


def test_voices_are_language_tags() -> None:
    voices = list_voices()
    assert {"en", "en-us", "fr"} <= set(voices)
    french, _ = synthesize("bonjour", voice="fr")
    assert french


def test_unknown_voice_is_rejected() -> None:
    with pytest.raises(ValueError, match="'xx-nowhere'"):
        synthesize("hello", voice="xx-nowhere")


@pytest.mark.parametrize(
    ("text", "settings"),
    [("   ", {}), ("hi", {"words_per_minute": 10}), ("hi", {"pitch": 101})],
)
def test_bad_settings_are_rejected(text: str, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        synthesize(text, **settings)


def test_concurrent_calls_do_not_mix_audio() -> None:
    texts = ["hi", "one two three four five six seven eight nine ten", "hello world"] * 4
    expected = [_seconds(*synthesize(text)) for text in texts]
    with ThreadPoolExecutor(max_workers=6) as pool:
        durations = [_seconds(*result) for result in pool.map(synthesize, texts)]
    assert durations == pytest.approx(expected, rel=0.02)


def test_transcribe_rejects_what_is_not_a_wav() -> None:
    pytest.importorskip("pocketsphinx", reason="speech recognition needs pocketsphinx")
    with pytest.raises(ValueError, match="WAV"):
        transcribe(b"definitely not audio")
