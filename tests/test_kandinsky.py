"""Kandinsky 5.0 text-to-video (``fal-ai/kandinsky5/text-to-video``) end to end through the queue
on a tiny random Kandinsky5T2VPipeline, loaded by the real loading code: the MP4 and its
metadata, progress, seeds (on the real checkpoint's layout too), bad input and missing weights.

A request makes the page's smallest video, 121 frames at 512x512: decoding them is most of
its time on a CPU, so the module makes three (one served, two in-process).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess
from test_run_and_queue import submit, wait_done

pytest.importorskip("diffusers")
pytest.importorskip("av")
import numpy as np

from openfal.catalog.schemas.kandinsky5 import Kandinsky5TextToVideoInput
from openfal.models import kandinsky
from openfal.models.tiny import make_tiny
from test_kontext import progress_steps, serve
from test_wan import decoded

ENDPOINT = "fal-ai/kandinsky5/text-to-video"
BODY = {"prompt": "a fox in the snow", "resolution": "512x512", "video_length": "5s",
        "num_inference_steps": 2}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights for 5 s videos; none for 10 s."""
    models = tmp_path_factory.mktemp("kandinsky") / "models"
    make_tiny("kandinsky5", models / kandinsky.KANDINSKY5_5S)
    return models


@pytest.fixture(scope="module")
def kandinsky_server(models_dir: Path) -> Iterator[ServerProcess]:
    with serve(models_dir.parent, ["openfal.models.kandinsky::Kandinsky5"]) as server:
        yield server


@pytest.fixture
def client(kandinsky_server: ServerProcess) -> Iterator[httpx.Client]:
    with kandinsky_server.client(timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def served(kandinsky_server: ServerProcess) -> dict[str, Any]:
    """One 5 s video through the queue: its progress, result and MP4."""
    with kandinsky_server.client(timeout=120) as client:
        handle = submit(client, ENDPOINT, BODY)
        steps = progress_steps(client, handle)
        response = client.get(handle["response_url"])
        assert response.status_code == 200, response.text
        result = response.json()
        download = client.get(result["video"]["url"])
        assert download.status_code == 200
    return {"steps": steps, "result": result, "mp4": download.content}


def inline_frames(url: str) -> np.ndarray:
    """The frames of an MP4 given as a data URI."""
    assert url.startswith("data:video/mp4;base64,")
    _, frames = decoded(base64.b64decode(url.split(",", 1)[1]))
    return np.asarray(frames, dtype=np.float32)


def test_resolutions_and_lengths() -> None:
    assert kandinsky.video_size("768x512") == (768, 512)
    assert kandinsky.video_size("512x768") == (512, 768)
    assert kandinsky.video_size("512x512") == (512, 512)
    # 24 fps: 5 s and 10 s as the 4k+1 frames the VAE makes.
    assert (kandinsky.video_frames("5s"), kandinsky.video_frames("10s")) == (121, 241)
    assert kandinsky.CHECKPOINTS == {"5s": kandinsky.KANDINSKY5_5S,
                                     "10s": kandinsky.KANDINSKY5_10S}


def test_a_5s_video_is_an_mp4_of_121_frames_at_24_fps(served: dict[str, Any]) -> None:
    result = served["result"]
    video = result["video"]
    assert (video["width"], video["height"], video["num_frames"]) == (512, 512, 121)
    assert (video["fps"], video["duration"]) == (24, 121 / 24)
    assert (video["content_type"], video["file_name"]) == ("video/mp4",
                                                           "random-noise-video.mp4")
    assert video["file_size"] == len(served["mp4"])
    fps, frames = decoded(served["mp4"])
    assert fps == 24
    assert [frame.shape for frame in frames] == [(512, 512, 3)] * 121
    assert np.std(frames) > 5  # noise, not a blank video
    assert result["prompt"] == BODY["prompt"]
    assert isinstance(result["seed"], int)
    assert result["timings"]["inference"] > 0
    assert "No safety checker ran" in result["notice"] and "noise" in result["notice"]


def test_progress_at_every_step(served: dict[str, Any]) -> None:
    steps = served["steps"]
    assert steps and steps[-1] == (2, 2) and steps == sorted(steps)


def test_the_output_schema_is_the_pages_video_and_more(client: httpx.Client) -> None:
    document = client.get("/api/openapi/queue/openapi.json",
                          params={"endpoint_id": ENDPOINT}).json()
    schemas = document["components"]["schemas"]
    output = schemas["Kandinsky5TextToVideoOutput"]
    assert list(output["properties"]) == ["video", "seed", "prompt", "timings", "notice"]
    video = schemas[output["properties"]["video"]["$ref"].rsplit("/", 1)[1]]
    assert {"url", "width", "height", "fps", "num_frames", "duration"} <= set(video["properties"])


def test_the_seed_reproduces_the_video_on_the_real_checkpoint_layout(
        served: dict[str, Any], models_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The page has no seed: the served video's seed, given to the app here, makes the same
    video (frame for frame on a CPU; the bound leaves room for another device's rounding), and
    another seed another one. The weights are the served ones in the published checkpoint's
    layout, whose model_index.json names Qwen2.5-VL's processor."""
    checkpoint = tmp_path / kandinsky.KANDINSKY5_5S
    shutil.copytree(models_dir / kandinsky.KANDINSKY5_5S, checkpoint)
    index = json.loads((checkpoint / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "Qwen2VLProcessor"]
    (checkpoint / "model_index.json").write_text(json.dumps(index))
    monkeypatch.setenv("OPENFAL_MODELS_DIR", str(tmp_path))
    app = kandinsky.Kandinsky5()
    app.setup()
    input = Kandinsky5TextToVideoInput.model_validate(BODY)
    seed = served["result"]["seed"]
    _, frames = decoded(served["mp4"])
    again = app.video(input, seed=seed)
    assert again.seed == seed
    assert np.abs(inline_frames(again.video.url) - frames).mean() < 1
    other = app.video(input, seed=seed + 1)
    assert np.abs(inline_frames(other.video.url) - frames).mean() > 10


@pytest.mark.parametrize(("field", "value"), [
    ("resolution", "1024x576"), ("resolution", "768:512"), ("video_length", "7s"),
    ("prompt", None)])
def test_input_off_the_page_is_a_422_on_the_field(client: httpx.Client, field: str,
                                                  value: Any) -> None:
    response = client.post(f"/queue/{ENDPOINT}", json={**BODY, field: value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


@pytest.mark.parametrize("steps", [0, 101])
def test_steps_out_of_range_are_a_422_on_the_field(client: httpx.Client, steps: int) -> None:
    handle = submit(client, ENDPOINT, {**BODY, "num_inference_steps": steps})
    wait_done(client, handle, timeout=60)
    response = client.get(handle["response_url"])
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]


def test_missing_weights_are_a_503_naming_where_it_looked(
        client: httpx.Client, models_dir: Path) -> None:
    handle = submit(client, ENDPOINT, {**BODY, "video_length": "10s"})
    status = wait_done(client, handle, timeout=60)
    assert status["error_type"] == "model_unavailable"
    assert str(models_dir / kandinsky.KANDINSKY5_10S) in status["error"]
    assert client.get(handle["response_url"]).status_code == 503
