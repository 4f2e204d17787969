"""Video and audio outputs through the queue: an app's frames come back as an H.264 MP4 that
PyAV decodes with the stated frame count, size and frame rate; audio carries its duration and
sample rate (the test app's tone and the built-in TTS)."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from test_run_and_queue import submit, wait_done

pytest.importorskip("av")
import av
import numpy as np

VIDEO_APPS = Path(__file__).parent / "apps" / "video_apps.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--app", f"{VIDEO_APPS}::Media", "--app", "openfal.models.tts::TTS",
            "--no-builtin", "--no-auth"]
    with ServerProcess(tmp_path_factory.mktemp("video"), args) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=60) as c:
        yield c


def run(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    handle = submit(client, endpoint, body)
    status = wait_done(client, handle, timeout=60)
    assert "error" not in status, status
    response = client.get(handle["response_url"])
    assert response.status_code == 200, response.text
    return response.json()


def download(client: httpx.Client, url: str) -> bytes:
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    response = client.get(url)
    assert response.status_code == 200
    return response.content


def decode(mp4: bytes) -> tuple[Any, list[np.ndarray]]:
    """The video stream and its frames as RGB arrays."""
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream, frames


def test_a_video_output_is_an_h264_mp4_with_its_metadata(client: httpx.Client) -> None:
    result = run(client, "openfal/av/clip", {"num_frames": 9, "fps": 8, "width": 64,
                                             "height": 48})
    video = result["video"]
    assert video["content_type"] == "video/mp4"
    assert (video["width"], video["height"], video["fps"]) == (64, 48, 8)
    assert (video["num_frames"], video["duration"]) == (9, 9 / 8)
    data = download(client, video["url"])
    assert video["file_size"] == len(data)
    stream, frames = decode(data)
    assert stream.codec_context.name == "h264"
    assert stream.average_rate == 8
    assert len(frames) == 9
    assert all(frame.shape == (48, 64, 3) for frame in frames)
    # Frame i was a flat grey of level 20 * i: the frames come back in order.
    levels = [float(frame.mean()) for frame in frames]
    assert levels == pytest.approx([20 * i for i in range(9)], abs=3)


def test_float_frames_fractional_fps_odd_sides_and_sync_mode(client: httpx.Client) -> None:
    body = {"num_frames": 5, "fps": 12.5, "width": 33, "height": 21, "float_frames": True,
            "sync_mode": True}
    video = run(client, "openfal/av/clip", body)["video"]
    assert video["url"].startswith("data:video/mp4;base64,")
    # 4:2:0 needs even sides: padded by one edge pixel, and the metadata says so.
    assert (video["width"], video["height"], video["num_frames"]) == (34, 22, 5)
    assert (video["fps"], video["duration"]) == (12.5, 0.4)
    stream, frames = decode(download(client, video["url"]))
    assert stream.average_rate == 12.5
    assert [frame.shape for frame in frames] == [(22, 34, 3)] * 5
    assert float(frames[4].mean()) == pytest.approx(80, abs=3)


def test_a_bad_frame_rate_is_refused_by_the_schema(client: httpx.Client) -> None:
    response = client.post("/queue/openfal/av/clip", json={"fps": 0})
    assert response.status_code == 422


def test_audio_outputs_carry_duration_and_sample_rate(client: httpx.Client) -> None:
    audio = run(client, "openfal/av/tone", {"seconds": 0.75, "sample_rate": 16000})["audio"]
    assert audio["content_type"] == "audio/wav"
    assert (audio["duration"], audio["sample_rate"], audio["channels"]) == (0.75, 16000, 1)
    with wave.open(io.BytesIO(download(client, audio["url"]))) as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() == 12000


def test_tts_audio_carries_duration_and_sample_rate(client: httpx.Client) -> None:
    pytest.importorskip("espeakng_loader")
    audio = run(client, "openfal/tts", {"text": "hello world"})["audio"]
    with wave.open(io.BytesIO(download(client, audio["url"]))) as wav:
        rate, frames = wav.getframerate(), wav.getnframes()
    assert audio["sample_rate"] == rate == 22050
    assert audio["duration"] == pytest.approx(frames / rate) and audio["duration"] > 0.3
