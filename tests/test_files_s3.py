"""Files on S3, end to end: ``openfal serve --files s3://bucket/prefix`` on a real S3 server
(SeaweedFS), with the AWS variables in the server's environment.

Uploads, serving (ETag, Range), multipart uploads, runner outputs, expiry and a second
gateway on the same bucket all go through the bucket; the data dir holds no file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from services import S3Service

from conftest import APPS, ServerProcess, wait_for

TTL_SECONDS = 3
PREFIX = "files"
KEEP = {"x-fal-object-lifecycle-preference": '{"expiration_duration_seconds": 3600}'}
DATA = os.urandom(300_000)
MiB = 1024 * 1024


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def s3_server(start_server: Callable[..., ServerProcess], bucket: str, *args: str,
              data_dir: Path | None = None) -> ServerProcess:
    """A gateway whose files live in ``bucket`` (the AWS variables come from ``s3_env``)."""
    return start_server("--files", f"s3://{bucket}/{PREFIX}", "--app", f"{APPS}::Media",
                        "--file-ttl-days", str(TTL_SECONDS / 86400), *args,
                        data_dir=data_dir)


def bearer(client: httpx.Client) -> dict[str, str]:
    response = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"},
                           json={})
    assert response.status_code == 200, response.text
    token = response.json()
    return {"authorization": f"{token['token_type']} {token['token']}"}


def upload(client: httpx.Client, data: bytes, **headers: str) -> str:
    response = client.post("/files/upload", content=data,
                           headers={**bearer(client), **headers})
    assert response.status_code == 200, response.text
    return response.json()["access_url"]


def file_id_of(url: str) -> str:
    return urlsplit(url).path.split("/")[2]


def no_local_files(server: ServerProcess) -> bool:
    folder = server.data_dir / "files"
    return not folder.exists() or not any(folder.iterdir())


def test_cdn_upload_is_served_from_the_bucket(start_server, s3_env: S3Service,
                                              s3_bucket: str) -> None:
    server = s3_server(start_server, s3_bucket)
    with server.client() as client:
        url = upload(client, DATA, **{"content-type": "image/png", "x-fal-file-name": "cat.png",
                                      **KEEP})
        assert url.startswith(server.url + "/files/") and url.endswith("/cat.png")
        got = client.get(url)
        assert got.status_code == 200
        assert got.content == DATA
        assert got.headers["etag"] == f'"{md5(DATA)}"'
        assert got.headers["content-type"] == "image/png"
        ranged = client.get(url, headers={"range": "bytes=10-19"})
        assert ranged.status_code == 206
        assert ranged.content == DATA[10:20]
        assert ranged.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    file_id = file_id_of(url)
    assert f"{PREFIX}/{file_id}" in s3_env.keys(s3_bucket, f"{PREFIX}/")
    head = s3_env.client().head_object(Bucket=s3_bucket, Key=f"{PREFIX}/{file_id}")
    assert head["ContentLength"] == len(DATA)
    assert no_local_files(server)
    # Nothing is left behind in staging either: the body went on to the bucket.
    staging = server.data_dir / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_python_client_multipart_out_of_order(start_server, s3_env: S3Service,
                                              s3_bucket: str) -> None:
    server = s3_server(start_server, s3_bucket)
    chunks = [os.urandom(5 * MiB), os.urandom(5 * MiB), b"tail"]
    whole = b"".join(chunks)
    with server.client() as client:
        auth = bearer(client)
        created = client.post("/files/upload/multipart",
                              headers={**auth, **KEEP, "content-type": "video/mp4",
                                       "x-fal-file-name": "clip.mp4"})
        assert created.status_code == 200, created.text
        access_url, upload_id = created.json()["access_url"], created.json()["uploadId"]
        parts = []
        for number in (3, 1, 2):
            put = client.put(f"{access_url}/multipart/{upload_id}/{number}",
                             content=chunks[number - 1],
                             headers={**auth, "content-type": "video/mp4"})
            assert put.status_code == 200, put.text
            assert put.headers["etag"] == f'"{md5(chunks[number - 1])}"'
            parts.append({"partNumber": number, "etag": put.headers["etag"]})
        done = client.post(f"{access_url}/multipart/{upload_id}/complete", headers=auth,
                           json={"parts": parts})
        assert done.status_code == 200, done.text
        assert done.json()["access_url"] == access_url
        got = client.get(access_url)
        assert got.status_code == 200
        assert got.content == whole
        assert got.headers["etag"] == f'"{md5(whole)}"'
        assert got.headers["content-type"] == "video/mp4"
    file_id = file_id_of(access_url)
    assert s3_env.keys(s3_bucket, f"{PREFIX}/.multipart/") == []
    assert f"{PREFIX}/{file_id}" in s3_env.keys(s3_bucket, f"{PREFIX}/")
    assert no_local_files(server)


def test_runner_output_goes_to_the_bucket(start_server, s3_env: S3Service,
                                          s3_bucket: str) -> None:
    server = s3_server(start_server, s3_bucket)
    document = b"written by the runner " + os.urandom(1000)
    data_uri = "data:application/octet-stream;base64," + base64.b64encode(document).decode()
    with server.client() as client:
        response = client.post("/openfal/media", json={"document": data_uri}, headers=KEEP)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["document"] == {"sha256": hashlib.sha256(document).hexdigest(),
                                      "size": len(document)}
        url = result["echo"]["url"]
        assert url.startswith(server.url + "/files/")
        got = client.get(url)
        assert (got.status_code, got.content) == (200, document)
        assert got.headers["etag"] == f'"{md5(document)}"'
    assert f"{PREFIX}/{file_id_of(url)}" in s3_env.keys(s3_bucket, f"{PREFIX}/")
    assert no_local_files(server)


def test_default_ttl_expires_and_collects_the_object(start_server, s3_env: S3Service,
                                                     s3_bucket: str) -> None:
    server = s3_server(start_server, s3_bucket)
    data_uri = "data:text/plain;base64," + base64.b64encode(b"output").decode()
    with server.client() as client:
        kept = upload(client, b"kept", **KEEP)
        # An upload and a runner's output, both with the server's default TTL.
        output = client.post("/openfal/media", json={"document": data_uri})
        assert output.status_code == 200, output.text
        short = [upload(client, b"short-lived"), output.json()["echo"]["url"]]
        keys = {f"{PREFIX}/{file_id_of(url)}" for url in short}
        assert [client.get(url).status_code for url in short] == [200, 200]
        assert keys <= set(s3_env.keys(s3_bucket, f"{PREFIX}/"))
        wait_for(lambda: all(client.get(url).status_code == 404 for url in short),
                 timeout=TTL_SECONDS + 10, what="the files to expire")
        wait_for(lambda: not keys & set(s3_env.keys(s3_bucket, f"{PREFIX}/")), timeout=10,
                 what="the expired objects to leave the bucket")
        # Their expiry markers went with them; the kept file stays.
        assert [key.rsplit(".", 1)[1] for key in s3_env.keys(s3_bucket, f"{PREFIX}/.expiry/")
                ] == [file_id_of(kept)]
        assert client.get(kept).content == b"kept"


def test_a_missing_bucket_stops_serve_with_one_line(s3_env: S3Service, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openfal", "serve", "--port", "0", "--data-dir",
         str(tmp_path / "data"), "--no-auth", "--no-builtin", "--files", "s3://missing-bucket/x"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith("does not exist: create it first"), lines[0]
    assert "missing-bucket" in lines[0]


def test_any_gateway_serves_any_file(start_server, s3_env: S3Service, s3_bucket: str,
                                     tmp_path: Path) -> None:
    first = s3_server(start_server, s3_bucket, data_dir=tmp_path / "first")
    second = s3_server(start_server, s3_bucket, data_dir=tmp_path / "second")
    document = os.urandom(5000)
    data_uri = "data:application/octet-stream;base64," + base64.b64encode(document).decode()
    with first.client() as client:
        uploaded = upload(client, DATA, **{"content-type": "image/png", **KEEP})
        output = client.post("/openfal/media", json={"document": data_uri}, headers=KEEP)
        assert output.status_code == 200, output.text
        produced = output.json()["echo"]["url"]
    with second.client() as client:
        for url, data in ((uploaded, DATA), (produced, document)):
            assert url.startswith(first.url)
            got = client.get(urlsplit(url).path)
            assert got.status_code == 200, url
            assert got.content == data
            assert got.headers["etag"] == f'"{md5(data)}"'
            ranged = client.get(urlsplit(url).path, headers={"range": "bytes=0-3"})
            assert (ranged.status_code, ranged.content) == (206, data[:4])
    assert no_local_files(first) and no_local_files(second)
