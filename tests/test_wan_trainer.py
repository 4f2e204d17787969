"""The Wan trainers (``fal-ai/wan-trainer/t2v``, ``/t2v-14b``, ``/i2v-720p``) end to end
through the queue on tiny random Wan checkpoints: archives of captioned images and clips, loss
lines in the logs, progress, the LoRA and its config, the LoRA loading into its
``openfal/wan/...`` endpoint and changing its video, cancel mid-training, bad training data."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, tarred
from test_run_and_queue import submit, wait_done

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("av")
import numpy as np
from PIL import Image

from openfal.app.errors import FieldException
from openfal.app.media import encode_mp4
from openfal.catalog import ENDPOINTS
from openfal.catalog.apps import LOCAL_IDS
from openfal.models import wan, wan_trainer
from openfal.models.tiny import make_tiny
from test_kontext import cancel_at_step

TRAINER_APPS = ["openfal.models.wan_trainer::WanTrainerT2V",
                "openfal.models.wan_trainer::WanTrainerT2V14B",
                "openfal.models.wan_trainer::WanTrainerI2V720P"]
WAN_APPS = ["openfal.models.wan::WanT2V", "openfal.models.wan::WanI2V"]
TRAIN_T2V, TRAIN_T2V_14B, TRAIN_I2V = ("fal-ai/wan-trainer/t2v", "fal-ai/wan-trainer/t2v-14b",
                                       "fal-ai/wan-trainer/i2v-720p")
T2V, I2V = "openfal/wan/t2v", "openfal/wan/i2v"
# A high rate, so that three steps move the LoRA far enough to show through H.264.
FAST = {"number_of_steps": 3, "learning_rate": 0.05, "trigger_phrase": "sks"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("wan-trainer") / "models"
    make_tiny("wan", models / wan.T2V_1_3B)
    make_tiny("wan", models / wan.T2V_14B, seed=1)
    make_tiny("wan-i2v", models / wan.I2V_14B_720P)
    return models


@pytest.fixture(scope="module")
def server(models_dir: Path) -> Iterator[ServerProcess]:
    args = [arg for ref in [*TRAINER_APPS, *WAN_APPS] for arg in ("--app", ref)]
    with ServerProcess(models_dir.parent, [*args, "--no-builtin", "--no-auth"]) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=120) as c:
        yield c


# Training data


def png(seed: int, width: int = 64, height: int = 48) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mp4(seed: int, frames: int, fps: float = 16, width: int = 64, height: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_mp4([rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                       for _ in range(frames)], fps).data


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "application/zip") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


IMAGES = {"cat.png": png(1), "cat.txt": b"a photo of a [trigger] cat", "dog.png": png(2),
          "more/fox.jpg": png(3), "more/fox.txt": b"a fox", "__MACOSX/._cat.png": b"junk",
          ".hidden.png": b"not an image"}


# Pieces


def test_captions_use_the_trigger_phrase() -> None:
    assert wan_trainer.caption_for(None, "sks") == "sks"
    assert wan_trainer.caption_for("  ", "sks") == "sks"
    assert wan_trainer.caption_for("a  [trigger]\ncat", "sks") == "a sks cat"
    assert wan_trainer.caption_for("a cat", "sks") == "sks, a cat"
    assert wan_trainer.caption_for("sks cat", "sks") == "sks cat"
    assert wan_trainer.caption_for("a [trigger] cat", "") == "a cat"
    assert wan_trainer.caption_for(None, "") == ""


@pytest.mark.parametrize("pack", [zipped, tarred])
def test_an_archive_unpacks_into_captioned_examples(tmp_path: Path, pack: Any) -> None:
    archive = tmp_path / "data"
    archive.write_bytes(pack({**IMAGES, "clip.mp4": mp4(4, 5), "clip.txt": b"waves",
                              "dog.webp": png(9)}))
    dest = tmp_path / "out"
    dest.mkdir()
    examples = wan_trainer.unpack_training_data(archive, dest, "sks")
    assert [(e.name, e.is_video, e.caption) for e in examples] == [
        ("cat.png", False, "a photo of a sks cat"), ("clip.mp4", True, "sks, waves"),
        ("dog.png", False, "sks"), ("dog.webp", False, "sks"),
        ("more/fox.jpg", False, "sks, a fox")]
    assert all(e.path.parent == dest and e.path.is_file() for e in examples)


def test_an_archive_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "data.zip"
    archive.write_bytes(zipped({"a.png": png(1), "b.png": png(2), "c.png": png(3)}))
    monkeypatch.setattr(wan_trainer, "MAX_EXAMPLES", 2)
    with pytest.raises(FieldException, match="more than 2 images"):
        wan_trainer.unpack_training_data(archive, tmp_path, "")
    monkeypatch.setattr(wan_trainer, "MAX_EXAMPLES", 10)
    monkeypatch.setattr(wan_trainer, "MAX_UNPACKED_BYTES", len(png(1)) + 10)
    with pytest.raises(FieldException, match="unpacks to more than"):
        wan_trainer.unpack_training_data(archive, tmp_path, "")


def test_clips_are_resampled_to_16_fps_or_scaled_to_81_frames(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(mp4(5, 30, fps=8))  # 3.75 s at 8 fps
    clip = wan_trainer.Example("clip.mp4", path, True, "")
    # 16 fps from the start: 60 frames (each source frame twice), cut to 4k+1 = 57.
    assert len(wan_trainer.clip_frames(clip, auto_scale=False)) == 57
    assert len(wan_trainer.clip_frames(clip, auto_scale=True)) == 81
    frames = wan_trainer.example_frames(clip, 32 * 32, auto_scale=False)
    assert {frame.size for frame in frames} == {(64, 64)}  # at least 64 a side
    assert [wan_trainer.clip_frame_count(n) for n in (1, 4, 5, 80, 81, 200)] == \
        [1, 1, 5, 77, 81, 81]


def test_the_trainers_have_the_pages_schemas_and_run_here() -> None:
    for cls, path, endpoint_id in [(wan_trainer.WanTrainerT2V, "/t2v", TRAIN_T2V),
                                   (wan_trainer.WanTrainerT2V14B, "/t2v-14b", TRAIN_T2V_14B),
                                   (wan_trainer.WanTrainerI2V720P, "/i2v-720p", TRAIN_I2V)]:
        spec = cls._endpoints[path]
        assert (cls.app_owner, cls.app_name) == ("fal-ai", "wan-trainer")
        assert spec.input_model is ENDPOINTS[endpoint_id].input_model
        assert spec.output_model is ENDPOINTS[endpoint_id].output_model
        assert endpoint_id in LOCAL_IDS


# Through the server


def train(client: httpx.Client, endpoint: str, body: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The final status (with logs) and the result of a training run."""
    handle = submit(client, endpoint, body)
    status = wait_done(client, handle, timeout=120)
    assert "error" not in status, status
    response = client.get(handle["response_url"])
    assert response.status_code == 200, response.text
    return status, response.json()


def video_digest(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> str:
    handle = submit(client, endpoint, body)
    status = wait_done(client, handle, timeout=120)
    assert "error" not in status, status
    result = client.get(handle["response_url"]).json()
    video = client.get(result["video"]["url"])
    assert video.status_code == 200
    return hashlib.sha256(video.content).hexdigest()


def t2v_body(**fields: Any) -> dict[str, Any]:
    return {"prompt": "sks, a photo of a cat", "num_frames": 5,
            "resolution": {"width": 64, "height": 48}, "num_inference_steps": 2, "seed": 7,
            "guidance_scale": 1, **fields}


def assert_changes_the_video(client: httpx.Client, endpoint: str, body: dict[str, Any],
                             lora_url: str) -> None:
    base = video_digest(client, endpoint, body)
    with_lora = video_digest(client, endpoint, {**body, "loras": [{"path": lora_url,
                                                                   "scale": 1}]})
    at_zero = video_digest(client, endpoint, {**body, "loras": [{"path": lora_url,
                                                                 "scale": 0}]})
    assert with_lora != base
    assert at_zero == base


def test_t2v_training_makes_a_lora_that_changes_openfal_wan_t2v(client: httpx.Client) -> None:
    status, result = train(client, TRAIN_T2V, {"training_data_url": data_uri(zipped(IMAGES)),
                                               **FAST})
    messages = [log["message"] for log in status["logs"]]
    losses = [m for m in messages if m.startswith("step ")]
    assert [m.split(" loss ")[0] for m in losses] == ["step 1/3", "step 2/3", "step 3/3"]
    assert all(float(m.split(" loss ")[1]) > 0 for m in losses)
    assert any("3 images, 0 clips" in m for m in messages)

    lora = result["lora_file"]
    assert lora["file_name"] == "wan-lora.safetensors"
    data = client.get(lora["url"]).content
    assert len(data) == lora["file_size"] > 0
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in header
    assert "transformer.blocks.1.attn2.to_out.0.lora_B.weight" in header
    config = client.get(result["config_file"]["url"]).json()
    assert result["config_file"]["content_type"] == "application/json"
    assert config["base_model"] == wan.T2V_1_3B
    assert config["inference_endpoint"] == T2V
    assert config["loras"] == [{"path": lora["url"], "scale": 1.0}]
    assert config["trigger_phrase"] == "sks"
    assert config["training"]["number_of_steps"] == 3
    assert config["training"]["examples"] == 3

    assert_changes_the_video(client, T2V, t2v_body(), lora["url"])


def test_cancel_mid_training_ends_it_and_the_next_run_starts_clean(
        client: httpx.Client) -> None:
    body = {"training_data_url": data_uri(zipped(IMAGES)), **FAST}
    _, first = train(client, TRAIN_T2V, body)
    cancel_at_step(client, submit(client, TRAIN_T2V, {**body, "number_of_steps": 100_000}), 3)
    # The cancelled run's adapter is gone: the same training gives the same LoRA again.
    _, again = train(client, TRAIN_T2V, body)
    assert client.get(again["lora_file"]["url"]).content == \
        client.get(first["lora_file"]["url"]).content


def test_i2v_training_on_clips_changes_openfal_wan_i2v(client: httpx.Client) -> None:
    files = {"a.mp4": mp4(6, 9), "a.txt": b"waves", "b.png": png(7, 64, 64)}
    status, result = train(client, TRAIN_I2V, {"training_data_url": data_uri(
        tarred(files), "application/gzip"), **FAST, "auto_scale_input": False})
    assert any("1 images, 1 clips" in log["message"] for log in status["logs"])
    config = client.get(result["config_file"]["url"]).json()
    assert (config["base_model"], config["inference_endpoint"]) == (wan.I2V_14B_720P, I2V)
    image = "data:image/png;base64," + base64.b64encode(png(8, 64, 64)).decode()
    body = t2v_body(image_url=image, resolution={"width": 64, "height": 64})
    assert_changes_the_video(client, I2V, body, result["lora_file"]["url"])


def test_t2v_14b_trains_on_an_uploaded_archive(client: httpx.Client) -> None:
    urls = client.post("/storage/upload/initiate",
                       json={"content_type": "application/zip", "file_name": "data.zip"}).json()
    assert httpx.put(urls["upload_url"], content=zipped(IMAGES)).status_code == 200
    _, result = train(client, TRAIN_T2V_14B, {"training_data_url": urls["file_url"],
                                              "number_of_steps": 1})
    config = client.get(result["config_file"]["url"]).json()
    assert (config["base_model"], config["inference_endpoint"]) == (wan.T2V_14B,
                                                                    "openfal/wan/t2v-14b")


def failure(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    handle = submit(client, endpoint, body)
    wait_done(client, handle, timeout=60)
    response = client.get(handle["response_url"])
    assert response.status_code == 422, response.text
    return response.json()["detail"][0]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"training_data_url": ""}, "training_data_url", "could not fetch"),
    ({"training_data_url": data_uri(zipped({"a.txt": b"a caption"}))}, "training_data_url",
     "no images or clips"),
    ({"training_data_url": data_uri(b"not an archive")}, "training_data_url",
     "not a zip or tar archive"),
    ({"training_data_url": data_uri(zipped({"a.png": b"not a png"}))}, "training_data_url",
     "not an image"),
    ({"training_data_url": data_uri(zipped(IMAGES)), "number_of_steps": 0},
     "number_of_steps", "between"),
    ({"training_data_url": data_uri(zipped(IMAGES)), "learning_rate": 0}, "learning_rate",
     "above 0"),
])
def test_bad_training_input_is_a_422_on_its_field(client: httpx.Client, body: dict[str, Any],
                                                  field: str, words: str) -> None:
    detail = failure(client, TRAIN_T2V, body)
    assert detail["loc"] == ["body", field]
    assert words in detail["msg"]
