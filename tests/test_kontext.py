"""The FLUX.1 Kontext [dev] endpoints (edit, inpaint, text-to-image) end to end through the queue
on a tiny random FluxKontextPipeline, loaded by the real loading code: sizes, seeds, masks,
previews, progress, cancellation, acceleration, bad input and missing weights."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ServerProcess, wait_for
from test_run_and_queue import submit, wait_done

pytest.importorskip("diffusers")
import numpy as np
from PIL import Image

from openfal.models.tiny import make_tiny

KONTEXT_APPS = ["openfal.models.flux_kontext::FluxKontextLora",
                "openfal.models.flux_krea::FluxKreaLora"]
EDIT = "fal-ai/flux-kontext-lora"
INPAINT = "fal-ai/flux-kontext-lora/inpaint"
TEXT_TO_IMAGE = "fal-ai/flux-kontext-lora/text-to-image"


def serve(data_dir: Path, apps: list[str]) -> ServerProcess:
    args = [arg for ref in apps for arg in ("--app", ref)]
    return ServerProcess(data_dir, [*args, "--no-builtin", "--no-auth"])


@pytest.fixture(scope="module")
def kontext_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Kontext weights (tiny, random); no Krea weights."""
    data_dir = tmp_path_factory.mktemp("kontext")
    make_tiny("flux-kontext", data_dir / "models" / "black-forest-labs" / "FLUX.1-Kontext-dev")
    with serve(data_dir, KONTEXT_APPS) as server:
        yield server


@pytest.fixture
def client(kontext_server: ServerProcess) -> Iterator[httpx.Client]:
    with kontext_server.client(timeout=120) as c:
        yield c


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def left_half_mask(width: int, height: int) -> Image.Image:
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, : width // 2] = 255
    return Image.fromarray(pixels)


def run(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submit through the queue, wait, and return the result (asserting success)."""
    handle = submit(client, endpoint, body)
    status = wait_done(client, handle, timeout=120)
    assert "error" not in status, status
    response = client.get(handle["response_url"])
    assert response.status_code == 200, response.text
    return response.json()


def failed(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    """Submit through the queue, wait, and return the (failed) result response."""
    handle = submit(client, endpoint, body)
    wait_done(client, handle, timeout=120)
    return client.get(handle["response_url"])


def fetch(client: httpx.Client, url: str) -> tuple[Image.Image, str]:
    response = client.get(url)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content)), hashlib.sha256(response.content).hexdigest()


def digests(client: httpx.Client, result: dict[str, Any]) -> list[str]:
    return [fetch(client, image["url"])[1] for image in result["images"]]


def progress_steps(client: httpx.Client, handle: dict[str, Any]) -> list[tuple[int, int]]:
    """The (step, total) of each progress update on the request's status stream, to the end."""
    steps = []
    with client.stream("GET", handle["status_url"] + "/stream") as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and (status := json.loads(line[6:])).get("progress"):
                steps.append((status["progress"]["step"], status["progress"]["total"]))
    return steps


def cancel_at_step(client: httpx.Client, handle: dict[str, Any], step: int = 2) -> None:
    """Cancel a running request once it has reported ``step``, and check that it stopped by
    itself at a step: cancelled within 4 s (the grace period is 5), its runner not killed."""

    def progressed() -> bool:
        progress = client.get(handle["status_url"]).json().get("progress")
        return bool(progress and progress["step"] >= step)

    wait_for(progressed, timeout=60, what=f"step {step}")
    runners = {r["pid"] for r in client.get("/api/runners").json()["runners"]}
    cancelled_at = time.monotonic()
    assert client.put(handle["cancel_url"]).status_code == 202
    status = wait_done(client, handle, timeout=20)
    assert status["error_type"] == "client_cancelled"
    assert time.monotonic() - cancelled_at < 4
    assert runners <= {r["pid"] for r in client.get("/api/runners").json()["runners"]}


def edit_body(**fields: Any) -> dict[str, Any]:
    return {"image_url": png_data_uri(noise_image(200, 136)), "prompt": "make it snow",
            "num_inference_steps": 3, "seed": 5, "output_format": "png", **fields}


def test_edit_matches_the_input_size_and_says_no_checker_ran(client: httpx.Client) -> None:
    result = run(client, EDIT, edit_body())
    assert result["seed"] == 5
    assert result["prompt"] == "make it snow"
    assert result["timings"]["inference"] > 0
    [meta] = result["images"]
    # 200x136 is not a multiple of 16: generated at 208x144, resized back exactly.
    assert (meta["width"], meta["height"], meta["content_type"]) == (200, 136, "image/png")
    image, _ = fetch(client, meta["url"])
    assert (image.size, image.format) == ((200, 136), "PNG")
    assert result["has_nsfw_concepts"] == [None]
    assert result["safety_checked"] is False
    assert "No safety checker ran" in result["notice"] and "noise" in result["notice"]


def test_edit_same_seed_same_image_other_seed_or_input_other_image(
        client: httpx.Client) -> None:
    first = digests(client, run(client, EDIT, edit_body()))
    assert digests(client, run(client, EDIT, edit_body())) == first
    assert digests(client, run(client, EDIT, edit_body(seed=6))) != first
    other_input = png_data_uri(noise_image(200, 136, seed=1))
    assert digests(client, run(client, EDIT, edit_body(image_url=other_input))) != first


def test_edit_resolution_modes(client: httpx.Client) -> None:
    # auto: the Kontext training resolution nearest the input's 200:136 (1.47) is 1248x832.
    auto = run(client, EDIT, edit_body(resolution_mode="auto", num_inference_steps=1))
    assert (auto["images"][0]["width"], auto["images"][0]["height"]) == (1248, 832)
    square = run(client, EDIT, edit_body(resolution_mode="1:1", num_inference_steps=1))
    assert (square["images"][0]["width"], square["images"][0]["height"]) == (1024, 1024)


def test_text_to_image_sizes_formats_and_num_images(client: httpx.Client) -> None:
    body = {"prompt": "a lighthouse", "num_inference_steps": 2, "seed": 1}
    custom = run(client, TEXT_TO_IMAGE, {**body, "image_size": {"width": 100, "height": 70},
                                         "num_images": 2, "output_format": "jpeg"})
    assert len(custom["images"]) == 2
    assert custom["has_nsfw_concepts"] == [None, None]
    for meta in custom["images"]:
        image, _ = fetch(client, meta["url"])
        assert (image.size, image.format) == ((100, 70), "JPEG")
    preset = run(client, TEXT_TO_IMAGE, {**body, "image_size": "square"})
    assert (preset["images"][0]["width"], preset["images"][0]["height"]) == (512, 512)
    assert preset["images"][0]["content_type"] == "image/png"  # the page's default
    inline = run(client, TEXT_TO_IMAGE, {**body, "image_size": "square", "sync_mode": True})
    assert inline["images"][0]["url"].startswith("data:image/png;base64,")


def test_inpaint_repaints_inside_the_mask_only(client: httpx.Client) -> None:
    source = noise_image(160, 96)
    body = {"image_url": png_data_uri(source), "mask_url": png_data_uri(left_half_mask(160, 96)),
            "reference_image_url": png_data_uri(noise_image(64, 64, seed=3)),
            "prompt": "a football", "num_inference_steps": 4, "seed": 2, "strength": 0.9}
    results = [np.asarray(fetch(client, run(client, INPAINT, {**body, "seed": seed})
                                ["images"][0]["url"])[0].convert("RGB")) for seed in (2, 3)]
    original = np.asarray(source)
    for result in results:
        assert result.shape == original.shape
        assert (result[:, 80:] == original[:, 80:]).all()  # outside the mask: the input's
        assert (result[:, :80] != original[:, :80]).any()  # inside: repainted
    assert (results[0][:, :80] != results[1][:, :80]).any()  # by the seed's noise


def test_inpaint_bad_mask_and_strength_are_422_on_the_field(client: httpx.Client) -> None:
    body = {"image_url": png_data_uri(noise_image(64, 64)),
            "mask_url": "data:text/plain;base64,bm90IGFuIGltYWdl",
            "reference_image_url": png_data_uri(noise_image(64, 64)), "prompt": "x",
            "num_inference_steps": 2}
    response = failed(client, INPAINT, body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "mask_url"]
    response = failed(client, INPAINT, {**body, "mask_url": body["image_url"], "strength": 0.1})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "strength"]


@pytest.mark.parametrize(("field", "value", "loc"), [
    ("num_images", 0, ["body", "num_images"]),
    ("num_inference_steps", 0, ["body", "num_inference_steps"]),
    ("image_size", {"width": 0, "height": 64}, ["body", "image_size", "width"]),
    ("image_size", {"width": 64, "height": 20000}, ["body", "image_size", "height"]),
])
def test_out_of_range_inputs_are_422_on_the_field(client: httpx.Client, field: str,
                                                  value: Any, loc: list[str]) -> None:
    response = failed(client, TEXT_TO_IMAGE, {"prompt": "x", field: value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_stream_sends_previews_then_the_result(client: httpx.Client) -> None:
    body = {"prompt": "preview", "image_size": {"width": 128, "height": 96},
            "num_inference_steps": 8, "seed": 3}
    events = []
    with client.stream("POST", f"/{TEXT_TO_IMAGE}/stream", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ")]
    previews, final = events[:-1], events[-1]
    assert [p["step"] for p in previews] == [2, 4, 6]
    for preview in previews:
        assert preview["images"][0]["url"].startswith("data:image/jpeg;base64,")
        assert (preview["images"][0]["width"], preview["images"][0]["height"]) == (128, 96)
    assert final["seed"] == 3
    assert (final["images"][0]["width"], final["images"][0]["height"]) == (128, 96)


def test_progress_per_step_and_acceleration(client: httpx.Client) -> None:
    body = {"prompt": "progress", "image_size": {"width": 128, "height": 128},
            "num_inference_steps": 6, "seed": 4, "acceleration": "high"}
    handle = submit(client, TEXT_TO_IMAGE, body)
    steps = progress_steps(client, handle)
    assert steps and steps[-1] == (6, 6) and steps == sorted(steps)
    accelerated = digests(client, client.get(handle["response_url"]).json())
    # First Block Cache is deterministic too.
    assert digests(client, run(client, TEXT_TO_IMAGE, body)) == accelerated


def test_cancel_stops_between_steps(client: httpx.Client) -> None:
    # Four 1024x1024 images in 100 steps: far longer than the cancel grace period (5 s).
    body = {"prompt": "slow", "image_size": "square_hd", "num_inference_steps": 100,
            "num_images": 4}
    cancel_at_step(client, submit(client, TEXT_TO_IMAGE, body))
    # Its runner serves the next request.
    run(client, TEXT_TO_IMAGE, {"prompt": "after", "num_inference_steps": 1,
                                "image_size": {"width": 64, "height": 64}})


def test_missing_weights_are_a_503_naming_where_it_looked(
        client: httpx.Client, kontext_server: ServerProcess) -> None:
    handle = submit(client, "fal-ai/flux-krea-lora/stream", {"prompt": "x"})
    status = wait_done(client, handle, timeout=60)
    assert status["error_type"] == "model_unavailable"
    expected = kontext_server.data_dir / "models" / "black-forest-labs" / "FLUX.1-Krea-dev"
    assert str(expected) in status["error"]
    assert client.get(handle["response_url"]).status_code == 503
