"""The Wan 2.1 endpoints (``openfal/wan/t2v``, ``/t2v-14b``, ``/i2v``) end to end through the
queue on tiny random WanPipeline / WanImageToVideoPipeline checkpoints, loaded by the real
loading code: the MP4 and its metadata, exact frame counts and sizes, seeds, progress,
cancellation, LoRAs, bad input and missing weights."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from test_run_and_queue import submit, wait_done

pytest.importorskip("diffusers")
pytest.importorskip("av")
import av
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from openfal.cli.main import app as cli
from openfal.models import wan
from openfal.models.tiny import make_tiny
from openfal.models.video import VideoSize, generation_frames
from test_kontext import cancel_at_step, progress_steps, run, serve
from test_lora import lora_bytes

WAN_APPS = ["openfal.models.wan::WanT2V", "openfal.models.wan::WanT2V14B",
            "openfal.models.wan::WanI2V"]
T2V, T2V_14B, I2V = "openfal/wan/t2v", "openfal/wan/t2v-14b", "openfal/wan/i2v"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny T2V 1.3B and I2V weights (the latter through the CLI); no T2V 14B weights."""
    models = tmp_path_factory.mktemp("wan") / "models"
    make_tiny("wan", models / wan.T2V_1_3B)
    made = CliRunner().invoke(cli, ["models", "make-tiny", "wan-i2v",
                                    str(models / wan.I2V_14B_720P)])
    assert made.exit_code == 0, made.output
    return models


@pytest.fixture(scope="module")
def wan_server(models_dir: Path) -> Iterator[ServerProcess]:
    with serve(models_dir.parent, WAN_APPS) as server:
        yield server


@pytest.fixture
def client(wan_server: ServerProcess) -> Iterator[httpx.Client]:
    with wan_server.client(timeout=120) as c:
        yield c


def mp4(client: httpx.Client, result: dict[str, Any]) -> bytes:
    url = result["video"]["url"]
    if url.startswith("data:"):
        return base64.b64decode(url.split(",", 1)[1])
    response = client.get(url)
    assert response.status_code == 200
    return response.content


def digest(client: httpx.Client, result: dict[str, Any]) -> str:
    return hashlib.sha256(mp4(client, result)).hexdigest()


def decoded(data: bytes) -> tuple[float, list[np.ndarray]]:
    """The stream's frame rate and its frames as RGB arrays."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return float(stream.average_rate), [frame.to_ndarray(format="rgb24")
                                            for frame in container.decode(stream)]


def png_data_uri(seed: int, width: int = 96, height: int = 64) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def t2v_body(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a fox in the snow", "num_frames": 6, "frames_per_second": 10,
            "resolution": {"width": 80, "height": 48}, "num_inference_steps": 2, "seed": 7,
            **fields}


def test_sizes_and_frame_counts() -> None:
    assert [generation_frames(n) for n in (1, 2, 5, 6, 81)] == [1, 5, 5, 9, 81]
    assert wan.wan_output_size("480p", "16:9") == (832, 480)
    assert wan.wan_output_size("720p", "9:16") == (720, 1280)
    assert wan.wan_output_size(VideoSize(width=100, height=70), "16:9") == (100, 70)
    # auto: the image's aspect ratio at the preset's area, sides multiples of 16.
    assert wan.wan_output_size("480p", "auto", (1000, 1000)) == (624, 624)
    assert wan.wan_output_size("720p", "auto", (720, 1280)) == (720, 1280)


def test_text_to_video_is_an_mp4_of_the_requested_frames_size_and_rate(
        client: httpx.Client) -> None:
    result = run(client, T2V, t2v_body())
    video = result["video"]
    # 6 frames asked: 9 generated (4k+1), the first 6 kept; 80x48 generated at 80x64.
    assert (video["num_frames"], video["width"], video["height"]) == (6, 80, 48)
    assert (video["fps"], video["duration"], video["content_type"]) == (10, 0.6, "video/mp4")
    assert video["file_name"] == "random-noise-video.mp4"
    data = mp4(client, result)
    assert video["file_size"] == len(data)
    fps, frames = decoded(data)
    assert fps == 10
    assert [frame.shape for frame in frames] == [(48, 80, 3)] * 6
    assert np.std(frames) > 5  # noise, not a blank video
    assert (result["seed"], result["prompt"]) == (7, "a fox in the snow")
    assert result["timings"]["inference"] > 0
    assert "No safety checker ran" in result["notice"] and "noise" in result["notice"]


def test_same_seed_same_video_other_seed_or_prompt_other_video(client: httpx.Client) -> None:
    first = digest(client, run(client, T2V, t2v_body()))
    assert digest(client, run(client, T2V, t2v_body())) == first
    assert digest(client, run(client, T2V, t2v_body(seed=8))) != first
    assert digest(client, run(client, T2V, t2v_body(prompt="a cat on a chair"))) != first


def test_without_a_seed_one_is_drawn_and_reproduces_the_video(client: httpx.Client) -> None:
    drawn = run(client, T2V, t2v_body(seed=None, sync_mode=True))
    assert drawn["video"]["url"].startswith("data:video/mp4;base64,")
    again = run(client, T2V, t2v_body(seed=drawn["seed"], sync_mode=True))
    assert mp4(client, again) == mp4(client, drawn)


def test_a_lora_changes_the_video_and_scale_zero_does_not(
        client: httpx.Client, models_dir: Path) -> None:
    path = ("data:application/octet-stream;base64,"
            + base64.b64encode(lora_bytes(models_dir / wan.T2V_1_3B, seed=1)).decode())
    base = digest(client, run(client, T2V, t2v_body()))
    assert digest(client, run(client, T2V, t2v_body(loras=[{"path": path,
                                                             "scale": 0}]))) == base
    assert digest(client, run(client, T2V, t2v_body(loras=[{"path": path,
                                                             "scale": 1}]))) != base
    # Unloaded after the call: the base model again.
    assert digest(client, run(client, T2V, t2v_body())) == base


def test_image_to_video_keeps_the_size_asked_and_depends_on_the_image(
        client: httpx.Client) -> None:
    body = {"prompt": "it starts to rain", "image_url": png_data_uri(1), "num_frames": 5,
            "frames_per_second": 16, "resolution": {"width": 64, "height": 64},
            "num_inference_steps": 2, "seed": 3}
    result = run(client, I2V, body)
    video = result["video"]
    assert (video["num_frames"], video["width"], video["height"], video["fps"]) == (5, 64, 64, 16)
    _, frames = decoded(mp4(client, result))
    assert [frame.shape for frame in frames] == [(64, 64, 3)] * 5
    assert digest(client, run(client, I2V, body)) == digest(client, result)
    other = run(client, I2V, {**body, "image_url": png_data_uri(2)})
    assert digest(client, other) != digest(client, result)


def test_image_to_video_needs_an_image(client: httpx.Client) -> None:
    body = {"prompt": "x", "image_url": "data:text/plain;base64,bm90IGFuIGltYWdl",
            "num_frames": 1, "resolution": {"width": 64, "height": 64},
            "num_inference_steps": 1}
    handle = submit(client, I2V, body)
    wait_done(client, handle, timeout=60)
    response = client.get(handle["response_url"])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image_url"]


@pytest.mark.parametrize(("field", "value"), [
    ("num_frames", 0), ("num_frames", 1000), ("frames_per_second", 0),
    ("resolution", "1080p"), ("resolution", {"width": 0, "height": 64}),
    ("num_inference_steps", 0), ("aspect_ratio", "auto")])
def test_out_of_range_inputs_are_422_on_the_field(client: httpx.Client, field: str,
                                                  value: Any) -> None:
    response = client.post(f"/queue/{T2V}", json=t2v_body(**{field: value}))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


def test_progress_per_step(client: httpx.Client) -> None:
    handle = submit(client, T2V, t2v_body(num_inference_steps=5))
    steps = progress_steps(client, handle)
    assert steps and steps[-1] == (5, 5) and steps == sorted(steps)
    assert client.get(handle["response_url"]).status_code == 200


def test_cancel_stops_between_steps(client: httpx.Client) -> None:
    # 100 steps of 33 frames at 256x256: far longer than the cancel grace period (5 s).
    body = t2v_body(num_frames=33, resolution={"width": 256, "height": 256},
                    num_inference_steps=100)
    cancel_at_step(client, submit(client, T2V, body))


def test_missing_weights_are_a_503_naming_where_it_looked(
        client: httpx.Client, models_dir: Path) -> None:
    handle = submit(client, T2V_14B, t2v_body())
    status = wait_done(client, handle, timeout=60)
    assert status["error_type"] == "model_unavailable"
    assert str(models_dir / wan.T2V_14B) in status["error"]
    assert client.get(handle["response_url"]).status_code == 503
