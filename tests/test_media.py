"""Media inputs by URL, data URI and upload; media outputs stored or inlined."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import APPS, ServerProcess, wait_for


def png_bytes(width: int = 32, height: int = 16) -> bytes:
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.putpixel((0, 0), (0, 0, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain HTTP server for inputs given by URL."""
    root = tmp_path_factory.mktemp("web")
    (root / "red.png").write_bytes(png_bytes(40, 20))
    (root / "notes.txt").write_bytes(b"not an image")
    (root / "big.bin").write_bytes(b"x" * (3 * 1024 * 1024))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def upload(client: httpx.Client, data: bytes, content_type: str, name: str) -> str:
    initiate = client.post("/storage/upload/initiate",
                           json={"content_type": content_type, "file_name": name})
    assert initiate.status_code == 200, initiate.text
    put = httpx.put(initiate.json()["upload_url"], content=data,
                    headers={"content-type": content_type})
    assert put.status_code == 200, put.text
    return initiate.json()["file_url"]


def test_image_input_as_data_uri_and_output_stored(client: httpx.Client) -> None:
    response = client.post("/openfal/media", json={"image": data_uri(png_bytes())})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["image"] == {"size": [32, 16], "width": 32, "height": 16}
    flipped = result["flipped"]
    assert flipped["content_type"] == "image/png"
    assert (flipped["width"], flipped["height"]) == (32, 16)
    assert flipped["url"].startswith(str(client.base_url) + "/files/")
    download = client.get(flipped["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert int(download.headers["content-length"]) == flipped["file_size"]
    image = Image.open(io.BytesIO(download.content))
    assert image.getpixel((31, 0)) == (0, 0, 255)  # the marked pixel moved to the right


def test_fetched_inputs_are_removed_once_answered(tmp_path: Path) -> None:
    # Each request's inputs are fetched into a folder of their own under the runner's
    # temporary directory; it is removed after the answer is sent, whatever the outcome.
    temp = tmp_path / "runner-tmp"
    temp.mkdir()
    args = ["--no-auth", "--no-builtin", "--app", f"{APPS}::Media"]
    with (ServerProcess(tmp_path / "data", args, env={"TMPDIR": str(temp)}) as server,
          server.client() as client):
        image = {"image": data_uri(png_bytes())}
        assert client.post("/openfal/media", json=image).status_code == 200
        broken = {"image": data_uri(b"not an image")}
        assert client.post("/openfal/media", json=broken).status_code >= 400
        wait_for(lambda: not list(temp.glob("openfal-request-*")),
                 what="the requests' input folders removed")
        assert client.post("/openfal/media", json=image).status_code == 200
        wait_for(lambda: not list(temp.glob("openfal-request-*")),
                 what="the input folder of the next request removed")


def test_inputs_by_http_url_and_plain_url_string(client: httpx.Client, web: str) -> None:
    response = client.post("/openfal/media", json={"image": f"{web}/red.png",
                                                   "image_url": f"{web}/red.png"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["image"]["size"] == [40, 20]
    assert result["image_url"] == {"size": [40, 20], "is_str": True}


def test_input_by_uploaded_file_url(client: httpx.Client) -> None:
    data = b"uploaded document\n" * 100
    url = upload(client, data, "text/plain", "doc.txt")
    handle = client.post("/queue/openfal/media", json={"document": url}).json()
    from test_run_and_queue import wait_done

    wait_done(client, handle)
    result = client.get(handle["response_url"]).json()
    assert result["document"] == {"sha256": hashlib.sha256(data).hexdigest(),
                                  "size": len(data)}
    assert client.get(result["echo"]["url"]).content == data


def test_sync_mode_inlines_outputs_and_stores_nothing(server: ServerProcess,
                                                      client: httpx.Client) -> None:
    files_dir = Path(server.data_dir) / "files"
    before = set(files_dir.rglob("*")) if files_dir.exists() else set()
    response = client.post("/openfal/media", json={"image": data_uri(png_bytes()),
                                                   "document": data_uri(b"abc", "text/plain"),
                                                   "sync_mode": True})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["flipped"]["url"].startswith("data:image/png;base64,")
    assert result["echo"]["url"] == data_uri(b"abc", "text/plain")
    after = set(files_dir.rglob("*")) if files_dir.exists() else set()
    assert after == before


@pytest.mark.parametrize(("body", "loc", "type_"), [
    ({"image": "data:image/png;base64,@@not-base64@@"}, ["body", "image"], "url_scheme"),
    ({"image": "ftp://example.com/x.png"}, ["body", "image"], "url_scheme"),
    ({"document": "file:///etc/passwd"}, ["body", "document"], "url_scheme"),
])
def test_malformed_file_inputs_are_422_at_submit(client: httpx.Client, body: dict,
                                                 loc: list, type_: str) -> None:
    for path in ("/openfal/media", "/queue/openfal/media"):
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == loc
        assert detail["type"] == type_


def test_unfetchable_inputs_are_422_naming_the_field(client: httpx.Client, web: str) -> None:
    cases = [
        ({"image": f"{web}/missing.png"}, ["body", "image"], "file_download_error"),
        ({"image_url": f"{web}/missing.png"}, ["body", "image_url"], "file_download_error"),
        ({"image_url": "data:image/png;base64,%%%"}, ["body", "image_url"],
         "file_download_error"),
        ({"image": f"{web}/notes.txt"}, ["body", "image"], "image_load_error"),
        ({"image_url": data_uri(b"plain text")}, ["body", "image_url"], "image_load_error"),
    ]
    for body, loc, type_ in cases:
        response = client.post("/openfal/media", json=body)
        assert response.status_code == 422, (body, response.text)
        detail = response.json()["detail"][0]
        assert (detail["loc"], detail["type"]) == (loc, type_)


def test_downloads_are_capped(start_server, web: str) -> None:
    server = start_server("--app", f"{APPS}::Media", "--max-download-mb", "1",
                          "--allow-network", "127.0.0.0/8")
    with server.client() as client:
        response = client.post("/openfal/media", json={"document": f"{web}/big.bin"})
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "document"]
        assert "larger than" in detail["msg"]
