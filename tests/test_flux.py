"""The FLUX app end to end on a tiny random pipeline, through the real loading code."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ServerProcess
from test_run_and_queue import submit, wait_done

pytest.importorskip("diffusers")
from PIL import Image

from openfal.models.tiny import make_tiny


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("flux")
    make_tiny("flux", data_dir / "models" / "black-forest-labs" / "FLUX.1-schnell")
    with pytest.MonkeyPatch.context() as patch:
        # Long enough for the batching test's four requests to meet in one call.
        patch.setenv("OPENFAL_FLUX_BATCH_WAIT_SECONDS", "0.5")
        server = ServerProcess(data_dir, ["--no-auth"]).start()
    try:
        yield server
    finally:
        server.stop()
        server.reap_leftovers()


@pytest.fixture
def flux(flux_server: ServerProcess) -> Iterator[httpx.Client]:
    with flux_server.client(timeout=120) as client:
        yield client


def generate(client: httpx.Client, **fields) -> dict:
    body = {"prompt": "a red fox in the snow", "image_size": {"width": 256, "height": 256},
            "num_inference_steps": 2, "seed": 7, **fields}
    handle = submit(client, "fal-ai/flux/schnell", body)
    status = wait_done(client, handle, timeout=120)
    assert "error" not in status, status
    return client.get(handle["response_url"]).json()


def fetch_image(client: httpx.Client, url: str) -> tuple[Image.Image, str]:
    response = client.get(url)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)), hashlib.sha256(response.content).hexdigest()


def test_queue_generates_the_requested_images(flux: httpx.Client) -> None:
    result = generate(flux, num_images=2, output_format="png")
    assert result["seed"] == 7
    assert result["prompt"] == "a red fox in the snow"
    # No safety classifier runs here: the result says so rather than claiming a check.
    assert result["has_nsfw_concepts"] == [None, None]
    assert result["safety_checked"] is False
    assert result["timings"]["inference"] > 0
    assert "noise" in result["notice"]
    assert len(result["images"]) == 2
    for meta in result["images"]:
        assert (meta["width"], meta["height"], meta["content_type"]) == (256, 256, "image/png")
        assert "random-noise" in meta["file_name"]
        image, _ = fetch_image(flux, meta["url"])
        assert image.size == (256, 256)
        assert image.format == "PNG"


def test_same_seed_same_image_other_seed_other_image(flux: httpx.Client) -> None:
    first = [fetch_image(flux, m["url"])[1] for m in generate(flux, seed=11)["images"]]
    again = [fetch_image(flux, m["url"])[1] for m in generate(flux, seed=11)["images"]]
    other = [fetch_image(flux, m["url"])[1] for m in generate(flux, seed=12)["images"]]
    assert first == again
    assert first != other


def test_presets_custom_sizes_and_formats(flux: httpx.Client) -> None:
    square = generate(flux, image_size="square")["images"][0]
    assert (square["width"], square["height"]) == (512, 512)
    custom = generate(flux, image_size={"width": 128, "height": 64},
                      output_format="jpeg")["images"][0]
    assert (custom["width"], custom["height"]) == (128, 64)
    image, _ = fetch_image(flux, custom["url"])
    assert (image.size, image.format) == ((128, 64), "JPEG")
    # Not a multiple of 16: generated at the nearest size the model takes, then resized.
    odd = generate(flux, image_size={"width": 100, "height": 60})["images"][0]
    assert (odd["width"], odd["height"]) == (100, 60)
    assert fetch_image(flux, odd["url"])[0].size == (100, 60)


def test_sync_mode_returns_data_uris(flux: httpx.Client) -> None:
    images = generate(flux, sync_mode=True)["images"]
    assert images[0]["url"].startswith("data:image/jpeg;base64,")


def test_progress_is_reported_per_step(flux: httpx.Client) -> None:
    handle = submit(flux, "fal-ai/flux/schnell", {
        "prompt": "progress", "image_size": {"width": 256, "height": 256},
        "num_inference_steps": 6})
    steps, events = [], []
    with flux.stream("GET", handle["status_url"] + "/stream") as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line)
                status = json.loads(line[6:])
                if status.get("progress"):
                    steps.append((status["progress"]["step"], status["progress"]["total"]))
    assert steps and steps[-1] == (6, 6)
    assert steps == sorted(steps)
    # The app's log line (tiny weights' notice), not asked for, sends no repeated event.
    assert all(event != after for event, after in itertools.pairwise(events))


def test_stream_sends_previews_then_the_result(flux: httpx.Client) -> None:
    events = []
    body = {"prompt": "preview", "image_size": {"width": 256, "height": 256},
            "num_inference_steps": 8, "seed": 3}
    with flux.stream("POST", "/fal-ai/flux/schnell/stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    previews, final = events[:-1], events[-1]
    assert len(previews) >= 2
    assert [p["step"] for p in previews] == sorted(p["step"] for p in previews)
    for preview in previews:
        assert preview["images"][0]["url"].startswith("data:image/jpeg;base64,")
        assert max(preview["images"][0]["width"], preview["images"][0]["height"]) <= 256
    assert final["seed"] == 3
    assert final["images"][0]["url"].startswith("http")


@pytest.mark.parametrize(("field", "value"), [
    ("image_size", {"width": 0, "height": 256}),
    ("image_size", {"width": 256, "height": 20000}),
    ("image_size", "huge"),
    ("num_images", 5),
    ("num_inference_steps", 0),
    ("output_format", "gif"),
    ("prompt", ""),
])
def test_bad_inputs_are_422_naming_the_field(flux: httpx.Client, field: str, value) -> None:
    body = {"prompt": "x", field: value}
    response = flux.post("/queue/fal-ai/flux/schnell", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]


def test_missing_weights_are_a_clear_503(flux: httpx.Client, flux_server: ServerProcess) -> None:
    handle = submit(flux, "fal-ai/flux/dev", {"prompt": "x", "num_inference_steps": 1})
    status = wait_done(flux, handle, timeout=120)
    assert status["error_type"] == "model_unavailable"
    expected = Path(flux_server.data_dir) / "models" / "black-forest-labs" / "FLUX.1-dev"
    assert str(expected) in status["error"]
    result = flux.get(handle["response_url"])
    assert result.status_code == 503
    # Not retried: no other runner would find the weights either.
    attempts = flux.get(f"/api/requests/{handle['request_id']}/attempts").json()["attempts"]
    assert len(attempts) == 1


def test_a_batched_image_matches_the_image_generated_alone(flux: httpx.Client) -> None:
    """Four requests alike but for prompt and seed share one pipeline call, each with its
    own generator: every image matches the one its request makes alone (batched CPU matrix
    products are not bit-identical: within 2 levels of 255 on average, 16 at most)."""
    bodies = [{"prompt": f"a fox number {i}", "image_size": {"width": 128, "height": 128},
               "num_inference_steps": 2, "seed": 100 + i, "output_format": "png"}
              for i in range(4)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        handles = list(pool.map(lambda body: submit(flux, "fal-ai/flux/schnell", body), bodies))
    batched = []
    for handle in handles:
        status = wait_done(flux, handle, timeout=120)
        assert any("served in one call with" in e["message"] for e in status["logs"]), status
        batched.append(flux.get(handle["response_url"]).json())
    for body, together in zip(bodies, batched, strict=True):
        alone = generate(flux, **body)
        assert together["seed"] == alone["seed"] == body["seed"]
        a = np.asarray(fetch_image(flux, together["images"][0]["url"])[0], dtype=np.int16)
        b = np.asarray(fetch_image(flux, alone["images"][0]["url"])[0], dtype=np.int16)
        assert a.shape == b.shape == (128, 128, 3)
        difference = np.abs(a - b)
        assert difference.mean() <= 2 and difference.max() <= 16, (difference.mean(),
                                                                   difference.max())
    # Other seeds give other images within the batch too.
    first, second = (np.asarray(fetch_image(flux, r["images"][0]["url"])[0], dtype=np.int16)
                     for r in batched[:2])
    assert np.abs(first - second).mean() > 10
