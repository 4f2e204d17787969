"""``openfal/tts`` through a real server: the WAV it returns is intelligible speech."""

from __future__ import annotations

import io
import wave

import httpx
import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("pocketsphinx")

from openfal.models.speech import transcribe


def speak(client: httpx.Client, **fields) -> tuple[dict, bytes]:
    response = client.post("/openfal/tts", json=fields)
    assert response.status_code == 200, response.text
    audio = response.json()["audio"]
    download = client.get(audio["url"])
    assert download.status_code == 200
    return audio, download.content


def duration(wav_bytes: bytes) -> float:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        return wav.getnframes() / wav.getframerate()


def test_speech_is_transcribed_back(client: httpx.Client) -> None:
    # pocketsphinx is rough on espeak's voice; these words come back every time.
    audio, wav_bytes = speak(client, text="hello world three four five")
    assert audio["content_type"] == "audio/wav"
    assert audio["file_size"] == len(wav_bytes)
    assert "three four five" in transcribe(wav_bytes)
    _, wav_bytes = speak(client, text="two three four five")
    assert "two three four five" in transcribe(wav_bytes)


def test_speed_changes_duration(client: httpx.Client) -> None:
    _, slow = speak(client, text="the quick brown fox jumps over the lazy dog", speed=0.6)
    _, fast = speak(client, text="the quick brown fox jumps over the lazy dog", speed=1.8)
    assert duration(slow) > 1.8 * duration(fast)


@pytest.mark.parametrize(("body", "field"), [
    ({"text": ""}, "text"),
    ({"text": "hi", "speed": 5}, "speed"),
    ({"text": "hi", "voice": "klingon"}, "voice"),
    ({}, "text"),
])
def test_bad_inputs_are_422(client: httpx.Client, body: dict, field: str) -> None:
    response = client.post("/openfal/tts", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
