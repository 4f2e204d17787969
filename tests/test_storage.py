"""File storage: the official clients' upload flows, serving, expiry, and the stores themselves
(local, and S3 on a real SeaweedFS server)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from openfal.errors import ConfigError
from openfal.files import (
    FileStorage,
    FileTooLarge,
    InvalidParts,
    LocalFileStorage,
    NotFound,
    open_file_storage,
)
from openfal.files.base import new_id, valid_id
from openfal.files.s3 import S3FileStorage, parse_url
from openfal.files.signing import Signer
from openfal.gateway.http import HTTPError
from openfal.gateway.storage_routes import spool
from services import S3Service

from conftest import ServerProcess, wait_for

DATA = os.urandom(300_000) + b"tail"


@pytest.fixture(scope="module")
def files_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with no apps but the built-in one, shared by this module's HTTP tests."""
    with ServerProcess(tmp_path_factory.mktemp("data"), ["--no-auth"]) as srv:
        yield srv


@pytest.fixture
def http(files_server: ServerProcess) -> Iterator[httpx.Client]:
    with files_server.client() as c:
        yield c


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cdn_token(client: httpx.Client) -> dict[str, str]:
    response = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"},
                           json={})
    assert response.status_code == 200, response.text
    return response.json()


def bearer(client: httpx.Client) -> dict[str, str]:
    token = cdn_token(client)
    return {"authorization": f"{token['token_type']} {token['token']}"}


def upload_cdn(client: httpx.Client, data: bytes, **headers: str) -> str:
    response = client.post("/files/upload", content=data, headers={**bearer(client), **headers})
    assert response.status_code == 200, response.text
    return response.json()["access_url"]


def file_id_of(url: str) -> str:
    return urlsplit(url).path.split("/")[2]


# Upload flows
def test_initiate_then_put_round_trip(http: httpx.Client, files_server: ServerProcess) -> None:
    response = http.post("/storage/upload/initiate", params={"storage_type": "gcs"},
                         json={"content_type": "text/plain", "file_name": "hello world.txt"})
    assert response.status_code == 200, response.text
    urls = response.json()
    assert set(urls) == {"upload_url", "file_url"}
    assert urls["upload_url"].startswith(files_server.url + "/")
    assert urls["file_url"] == f"{files_server.url}/files/{file_id_of(urls['file_url'])}/" \
                               "hello%20world.txt"
    assert http.get(urls["file_url"]).status_code == 404  # no bytes yet
    # A bare PUT, as the JS client does it: no Authorization, the signature is in the URL.
    put = httpx.put(urls["upload_url"], content=DATA, headers={"content-type": "text/plain"})
    assert put.status_code == 200, put.text
    got = http.get(urls["file_url"])
    assert got.status_code == 200
    assert got.content == DATA
    assert got.headers["content-type"] == "text/plain"
    assert got.headers["content-length"] == str(len(DATA))
    assert got.headers["etag"] == f'"{md5(DATA)}"'
    assert got.headers["access-control-allow-origin"] == "*"


def test_cdn_token_and_single_upload(http: httpx.Client, files_server: ServerProcess) -> None:
    body = cdn_token(http)
    assert body["token_type"] == "Bearer"
    assert body["base_url"] == files_server.url
    assert body["expires_at"].endswith("+00:00")
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(minutes=30) < expires - datetime.now(expires.tzinfo) <= timedelta(hours=1)

    url = upload_cdn(http, DATA, **{"content-type": "image/png", "x-fal-file-name": "cat.png"})
    assert url.startswith(files_server.url + "/files/") and url.endswith("/cat.png")
    got = http.get(url)
    assert (got.status_code, got.content, got.headers["content-type"]) == (200, DATA,
                                                                           "image/png")


def test_upload_without_a_name_gets_one_from_its_content_type(http: httpx.Client) -> None:
    url = upload_cdn(http, b"\x89PNG", **{"content-type": "image/png"})
    assert url.endswith("/file.png")
    assert http.get(url).content == b"\x89PNG"


def test_python_multipart_with_parts_out_of_order(http: httpx.Client) -> None:
    token = cdn_token(http)
    auth = {"authorization": f"Bearer {token['token']}"}
    created = http.post(f"{token['base_url']}/files/upload/multipart",
                        headers={**auth, "content-type": "video/mp4",
                                 "x-fal-file-name": "clip.mp4"})
    assert created.status_code == 200, created.text
    access_url, upload_id = created.json()["access_url"], created.json()["uploadId"]
    chunks = [DATA[:100_000], DATA[100_000:200_000], DATA[200_000:]]
    parts = []
    for number in (3, 1, 2):
        put = http.put(f"{access_url}/multipart/{upload_id}/{number}",
                       content=chunks[number - 1],
                       headers={**auth, "content-type": "video/mp4",
                                "accept-encoding": "identity"})
        assert put.status_code == 200, put.text
        assert put.headers["etag"] == f'"{md5(chunks[number - 1])}"'
        parts.append({"partNumber": number, "etag": put.headers["etag"]})
    done = http.post(f"{access_url}/multipart/{upload_id}/complete", headers=auth,
                     json={"parts": parts})
    assert done.status_code == 200, done.text
    got = http.get(access_url)
    assert got.content == DATA
    assert got.headers["content-type"] == "video/mp4"
    assert got.headers["etag"] == f'"{md5(DATA)}"'
    # The upload is gone once complete.
    again = http.post(f"{access_url}/multipart/{upload_id}/complete", headers=auth,
                      json={"parts": parts})
    assert again.status_code == 404


def test_js_multipart(http: httpx.Client) -> None:
    response = http.post("/storage/upload/initiate-multipart",
                         params={"storage_type": "fal-cdn-v3"},
                         headers={"x-fal-object-lifecycle":
                                  '{"expiration_duration_seconds": 3600}'},
                         json={"content_type": "audio/wav", "file_name": "a.wav"})
    assert response.status_code == 200, response.text
    upload_url, file_url = response.json()["upload_url"], response.json()["file_url"]
    split = urlsplit(upload_url)
    base, query = f"{split.scheme}://{split.netloc}{split.path}", f"?{split.query}"
    parts = []
    for number, chunk in enumerate((DATA[:150_000], DATA[150_000:]), start=1):
        put = httpx.put(f"{base}/{number}{query}", content=chunk)
        assert put.status_code == 200, put.text
        assert put.json()["partNumber"] == number
        parts.append(put.json())
    done = httpx.post(f"{base}/complete{query}", json={"parts": parts})
    assert done.status_code == 200, done.text
    got = http.get(file_url)
    assert (got.content, got.headers["content-type"]) == (DATA, "audio/wav")


def test_complete_rejects_bad_part_lists(http: httpx.Client) -> None:
    auth = bearer(http)
    created = http.post("/files/upload/multipart", headers=auth).json()
    base = f"{created['access_url']}/multipart/{created['uploadId']}"
    etag = http.put(f"{base}/1", content=b"one", headers=auth).headers["etag"]

    wrong = http.post(f"{base}/complete", headers=auth,
                      json={"parts": [{"partNumber": 1, "etag": '"' + "0" * 32 + '"'}]})
    assert wrong.status_code == 400
    assert "does not match" in wrong.json()["detail"]
    missing = http.post(f"{base}/complete", headers=auth,
                        json={"parts": [{"partNumber": 1, "etag": etag},
                                        {"partNumber": 2, "etag": etag}]})
    assert missing.status_code == 400
    assert "part 2 was not uploaded" in missing.json()["detail"]
    twice = http.post(f"{base}/complete", headers=auth,
                      json={"parts": [{"partNumber": 1, "etag": etag}] * 2})
    assert twice.status_code == 400
    malformed = http.post(f"{base}/complete", headers=auth, content=b'{"parts": [{"etag": 1}]}')
    assert malformed.status_code == 422
    locs = [item["loc"] for item in malformed.json()["detail"]]
    assert ["body", "parts", 0, "partNumber"] in locs
    not_json = http.post(f"{base}/complete", headers=auth, content=b"{nope")
    assert not_json.status_code == 422
    # Still completable after all of that.
    ok = http.post(f"{base}/complete", headers=auth,
                   json={"parts": [{"partNumber": 1, "etag": etag}]})
    assert ok.status_code == 200
    assert http.get(created["access_url"]).content == b"one"


def test_initiate_with_malformed_body_names_the_field(http: httpx.Client) -> None:
    response = http.post("/storage/upload/initiate", json={"file_name": ["x"]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file_name"]


# Serving
def test_range_requests(http: httpx.Client) -> None:
    url = upload_cdn(http, DATA)
    size = len(DATA)
    cases = {"bytes=0-9": (0, 9), "bytes=1000-1999": (1000, 1999), "bytes=-5": (size - 5,
             size - 1), "bytes=299990-": (299990, size - 1), "bytes=10-99999999": (10, size - 1)}
    for header, (first, last) in cases.items():
        got = http.get(url, headers={"range": header})
        assert got.status_code == 206, header
        assert got.content == DATA[first:last + 1], header
        assert got.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert got.headers["content-length"] == str(last - first + 1)
    for header in (f"bytes={size}-", "bytes=-0"):
        got = http.get(url, headers={"range": header})
        assert got.status_code == 416, header
        assert got.headers["content-range"] == f"bytes */{size}"
    # Ranges we do not serve piecewise get the whole file.
    for header in ("bytes=0-1,5-6", "lines=1-2", "bytes=9-3"):
        got = http.get(url, headers={"range": header})
        assert (got.status_code, got.content) == (200, DATA), header
    stale = http.get(url, headers={"range": "bytes=0-9", "if-range": '"' + "f" * 32 + '"'})
    assert (stale.status_code, stale.content) == (200, DATA)


def test_head_etag_and_not_modified(http: httpx.Client) -> None:
    url = upload_cdn(http, DATA, **{"content-type": "application/json"})
    head = http.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(DATA))
    assert head.headers["accept-ranges"] == "bytes"
    etag = head.headers["etag"]
    assert etag == f'"{md5(DATA)}"'
    not_modified = http.get(url, headers={"if-none-match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["etag"] == etag
    changed = http.get(url, headers={"if-none-match": '"' + "0" * 32 + '"'})
    assert changed.status_code == 200
    unknown = http.get(f"/files/{new_id()}/x")
    assert (unknown.status_code, unknown.json()["error_type"]) == (404, "file_not_found")


def test_cors_preflight(http: httpx.Client) -> None:
    urls = http.post("/storage/upload/initiate", json={}).json()
    preflight = http.options(urls["upload_url"], headers={
        "origin": "https://app.example", "access-control-request-method": "PUT",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "PUT" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"


# Auth
def test_bad_or_missing_signature_is_403(http: httpx.Client) -> None:
    upload_url = http.post("/storage/upload/initiate", json={}).json()["upload_url"]
    split = urlsplit(upload_url)
    bare = f"{split.scheme}://{split.netloc}{split.path}"
    assert httpx.put(bare, content=b"x").status_code == 403
    assert httpx.put(bare + "?signature=AAAA", content=b"x").status_code == 403
    other = http.post("/storage/upload/initiate", json={}).json()["upload_url"]
    # A valid signature for another upload does not open this one.
    assert httpx.put(bare + "?" + urlsplit(other).query, content=b"x").status_code == 403
    assert httpx.put(f"{bare}/1?signature=AAAA", content=b"x").status_code == 403
    assert httpx.post(f"{bare}/complete", json={"parts": []}).status_code == 403


def test_bad_missing_or_expired_token_is_401(http: httpx.Client,
                                             files_server: ServerProcess) -> None:
    database = files_server.data_dir / "openfal.db"
    assert database.stat().st_mode & 0o777 == 0o600, "the store holds the signing secret"
    with closing(sqlite3.connect(database)) as conn:
        secret = conn.execute("SELECT value FROM secrets WHERE name='storage-signing'"
                              ).fetchone()[0]
    expired, _ = Signer(secret).issue_token(time.time() - 7200, 3600)
    for headers in ({}, {"authorization": "Bearer nope"},
                    {"authorization": f"Bearer {expired}"},
                    {"authorization": "Bearer " + bearer(http)["authorization"][7:] + "x"}):
        response = http.post("/files/upload", content=b"x", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error_type"] == "unauthorized"
        assert http.post("/files/upload/multipart", headers=headers).status_code == 401


def test_ids_that_escape_the_folder_are_rejected(http: httpx.Client,
                                                 files_server: ServerProcess) -> None:
    url = upload_cdn(http, b"secret-neighbour")
    raw_paths = ["/files/..%2F..%2Fstorage.key/x", "/files/..%2Fstorage.key/x",
                 "/files/%2Fetc%2Fpasswd/x", "/files/%2e%2e/storage.key",
                 f"/files/{file_id_of(url)}%00/x", f"/files/{file_id_of(url)}.json/x",
                 "/files/uploads/x", "/files/tmp/x"]
    for path in raw_paths:
        status, body = raw_get(files_server, path)
        assert status in (400, 404), path
        assert b"secret" not in body and b"file_id" not in body, path
    query = urlsplit(http.post("/storage/upload/initiate", json={}).json()["upload_url"]).query
    auth = {**bearer(http), "content-length": "0"}
    for method, path, headers, expected in [
        ("PUT", f"/storage/uploads/..?{query}", None, 403),
        ("PUT", f"/files/{file_id_of(url)}/x/multipart/../1", auth, 404),
        # Slashes, encoded or not, leave no upload route matching at all.
        ("PUT", f"/storage/uploads/..%2F..%2Fx?{query}", None, 405),
        ("PUT", f"/files/{file_id_of(url)}/x/multipart/..%2F..%2Fy/1", auth, 405),
    ]:
        assert raw_request(files_server, method, path, headers)[0] == expected, path


def raw_get(server: ServerProcess, path: str) -> tuple[int, bytes]:
    return raw_request(server, "GET", path)


def raw_request(server: ServerProcess, method: str, path: str,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A request whose path goes out exactly as written (httpx would normalize it)."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {"content-length": "0"}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# Limits
def test_oversized_upload_is_413(http: httpx.Client, files_server: ServerProcess) -> None:
    too_big = str(1024 * 1024 * 1024 + 1)
    status, body = raw_request(files_server, "POST", "/files/upload",
                               {**bearer(http), "content-length": too_big})
    assert status == 413
    assert json.loads(body)["error_type"] == "request_too_large"
    upload_url = http.post("/storage/upload/initiate", json={}).json()["upload_url"]
    split = urlsplit(upload_url)
    status, _ = raw_request(files_server, "PUT", f"{split.path}?{split.query}",
                            {"content-length": too_big})
    assert status == 413


async def test_spool_stops_at_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    with pytest.raises(HTTPError) as caught:
        await spool(body(), tmp_path, 9_999)
    assert caught.value.status == 413
    assert list(tmp_path.iterdir()) == []
    path = await spool(body(), tmp_path, 10_000)
    assert path.read_bytes() == b"x" * 10_000


# Expiry
def test_lifecycle_header_sets_expiry(http: httpx.Client, files_server: ServerProcess) -> None:
    short = upload_cdn(http, b"soon gone", **{
        "x-fal-object-lifecycle-preference": '{"expiration_duration_seconds": 1}'})
    forever = upload_cdn(http, b"kept", **{
        "x-fal-object-lifecycle": '{"expiration_duration_seconds": null}'})
    assert http.get(short).status_code == 200
    wait_for(lambda: http.get(short).status_code == 404, timeout=10, what="expiry")
    record = files_server.data_dir / "files" / f"{file_id_of(forever)}.json"
    assert json.loads(record.read_text())["expires_at"] is None
    assert http.get(forever).content == b"kept"
    for bad in ('{"expiration_duration_seconds": -1}', "[]", "not json",
                '{"expiration_duration_seconds": "1d"}'):
        response = http.post("/files/upload", content=b"x", headers={
            **bearer(http), "x-fal-object-lifecycle-preference": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["loc"][:2] == [
            "header", "x-fal-object-lifecycle-preference"]


def test_default_ttl_and_garbage_collection(start_server) -> None:
    server = start_server("--file-ttl-days", str(2 / 86400))  # 2 s; collected every 0.2 s
    with server.client() as client:
        url = upload_cdn(client, b"short-lived")
        kept = upload_cdn(client, b"kept", **{
            "x-fal-object-lifecycle-preference": '{"expiration_duration_seconds": 3600}'})
        data = server.data_dir / "files" / file_id_of(url)
        assert client.get(url).content == b"short-lived"
        assert data.exists()
        wait_for(lambda: client.get(url).status_code == 404, timeout=10, what="expiry")
        wait_for(lambda: not data.exists() and not data.with_suffix(".json").exists(),
                 timeout=10, what="the expired file to leave the disk")
        assert client.get(kept).content == b"kept"


# The stores themselves, local and S3 (a real SeaweedFS server)
@dataclass
class Backend:
    open: Callable[..., FileStorage]  # keyword arguments: abandon_after
    holds: Callable[[str], bool]  # whether the file's bytes are still on the medium


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return Backend(open=lambda **kw: LocalFileStorage(tmp_path / "files", **kw),
                       holds=lambda file_id: (tmp_path / "files" / file_id).exists())
    bucket: str = request.getfixturevalue("s3_bucket")
    service: S3Service = request.getfixturevalue("s3_service")
    return Backend(
        open=lambda **kw: S3FileStorage.from_url(f"s3://{bucket}/files",
                                                 staging_dir=tmp_path / "staging", **kw),
        holds=lambda file_id: f"files/{file_id}" in service.keys(bucket))


def test_storage_validates_ids(backend: Backend, tmp_path: Path) -> None:
    storage = backend.open()
    (tmp_path / "outside").write_text("outside")
    assert valid_id(new_id())
    bad_ids = ["..", "../outside", "/etc/passwd", str(tmp_path / "outside"), "a\0b", "",
               "a/b", "x" * 31, "x" * 33, "x" * 31 + "/", "x" * 31 + ".", "x" * 32 + "\n",
               "uploads", "tmp", "%2e%2e%2f" + "x" * 23]
    for bad in bad_ids:
        assert not valid_id(bad), bad
        assert storage.stat(bad) is None
        assert storage.delete(bad) is False
        with pytest.raises(NotFound):
            storage.read(bad)
        with pytest.raises(NotFound):
            storage.put_part(bad, 1, b"x")
        with pytest.raises(NotFound):
            storage.complete_multipart(bad, [(1, "0" * 32)])
    assert (tmp_path / "outside").read_text() == "outside"
    upload = storage.create_multipart(file_name="f", content_type="text/plain")
    storage.put_part(upload.upload_id, 1, b"x")
    with pytest.raises(InvalidParts):  # an etag is never a path
        storage.complete_multipart(upload.upload_id, [(1, "../../outside")])


def test_storage_round_trip(backend: Backend, tmp_path: Path) -> None:
    storage = backend.open()
    stored = storage.put(DATA, file_name="a b/ü.bin", content_type="application/octet-stream")
    assert storage.stat(stored.id) == stored
    assert (stored.size, stored.etag) == (len(DATA), md5(DATA))
    assert b"".join(storage.read(stored.id)) == DATA
    assert b"".join(storage.read(stored.id, 10, 20)) == DATA[10:20]
    assert b"".join(storage.read(stored.id, len(DATA) - 3)) == DATA[-3:]

    source = tmp_path / "big.bin"
    source.write_bytes(DATA)
    moved = storage.put_path(source, file_name="big.bin", content_type="x/y", move=True)
    assert not source.exists()
    assert b"".join(storage.read(moved.id)) == DATA

    # S3 takes parts of 5 MiB at least, but the last.
    first = os.urandom(5 * 1024 * 1024)
    upload = storage.create_multipart(file_name="m", content_type="text/plain")
    etags = {n: storage.put_part(upload.upload_id, n, chunk)
             for n, chunk in ((2, b"world"), (1, first))}
    assert etags == {1: md5(first), 2: md5(b"world")}
    with pytest.raises(FileTooLarge):
        storage.complete_multipart(upload.upload_id, list(etags.items()), max_size=5)
    done = storage.complete_multipart(upload.upload_id, [(2, etags[2]), (1, etags[1])])
    assert done.id == upload.file_id
    assert (done.size, done.etag) == (len(first) + 5, md5(first + b"world"))
    assert storage.stat(done.id) == done
    assert b"".join(storage.read(done.id)) == first + b"world"
    with pytest.raises(NotFound):  # an upload completes once
        storage.complete_multipart(upload.upload_id, [(2, etags[2]), (1, etags[1])])

    assert storage.delete(stored.id) is True
    assert storage.stat(stored.id) is None
    assert storage.delete(stored.id) is False


def test_storage_collects_expired_and_abandoned(backend: Backend) -> None:
    storage = backend.open(abandon_after=60)
    now = time.time()
    gone = storage.put(b"a", file_name="a", content_type="text/plain", expires_at=now + 5)
    kept = storage.put(b"b", file_name="b", content_type="text/plain", expires_at=None)
    abandoned = storage.create_multipart(file_name="c", content_type="text/plain")
    stale = storage.staging_dir / "left-by-a-crash"
    stale.write_bytes(b"x")
    os.utime(stale, (now - 3600, now - 3600))
    assert storage.collect_expired(now) == 0
    assert storage.collect_expired(now + 10) == 1
    assert storage.stat(gone.id) is None and storage.stat(kept.id) == kept
    assert not backend.holds(gone.id) and backend.holds(kept.id)
    assert not stale.exists()
    storage.collect_expired(now + 120)
    with pytest.raises(NotFound):
        storage.put_part(abandoned.upload_id, 1, b"late")


def test_expired_is_gone_at_once(backend: Backend) -> None:
    storage = backend.open()
    stored = storage.put(b"old", file_name="a", content_type="text/plain",
                         expires_at=time.time() - 1)
    assert storage.stat(stored.id) is None
    with pytest.raises(NotFound):
        storage.read(stored.id)
    with pytest.raises(NotFound):
        storage.read(stored.id, 1, 2)
    assert backend.holds(stored.id)  # until the next collection
    assert storage.collect_expired(time.time()) == 1
    assert not backend.holds(stored.id)


def test_stored_bytes_counts_the_stored_files_alone(backend: Backend) -> None:
    storage = backend.open()
    assert storage.stored_bytes() == 0
    storage.put(b"abc", file_name="a", content_type="text/plain", expires_at=time.time() + 60)
    kept = storage.put(DATA, file_name="b", content_type="text/plain")
    upload = storage.create_multipart(file_name="c", content_type="text/plain")
    storage.put_part(upload.upload_id, 1, b"a part, not yet a file")
    (storage.staging_dir / "staged").write_bytes(b"not a file either")
    assert storage.stored_bytes() == 3 + len(DATA)
    storage.delete(kept.id)
    assert storage.stored_bytes() == 3


# The S3 store
def test_s3_urls(tmp_path: Path) -> None:
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://my.bucket-1/a/b/") == ("my.bucket-1", "a/b")
    for bad in ("bucket", "s3:/bucket", "s3://", "s3:///prefix", "http://bucket/x",
                "s3://Bucket", "s3://b", "s3://key:secret@bucket", "s3://bucket:9000",
                "s3://bucket/a//b", "s3://bucket?x=1", "s3://bucket#x", "s3://bu_cket"):
        with pytest.raises(ConfigError, match="not an S3 URL"):
            parse_url(bad)
        if bad.startswith("s3:"):
            with pytest.raises(ConfigError, match="not an S3 URL"):
                open_file_storage(bad, tmp_path)
    local = open_file_storage(None, tmp_path)
    assert isinstance(local, LocalFileStorage) and local.root == tmp_path / "files"
    elsewhere = open_file_storage(str(tmp_path / "elsewhere"), tmp_path)
    assert isinstance(elsewhere, LocalFileStorage) and elsewhere.root == tmp_path / "elsewhere"
    for other in ("gs://bucket/x", "http://bucket/x", "file:/x"):
        with pytest.raises(ConfigError, match="unsupported file storage"):
            open_file_storage(other, tmp_path)


def test_s3_chosen_by_url(s3_bucket: str, s3_env: S3Service, tmp_path: Path) -> None:
    storage = open_file_storage(f"s3://{s3_bucket}/some/prefix", tmp_path)
    assert isinstance(storage, S3FileStorage)
    assert storage.staging_dir == tmp_path / "staging" and storage.staging_dir.is_dir()
    stored = storage.put(b"x", file_name="x", content_type="text/plain", expires_at=None)
    assert s3_env.keys(s3_bucket) == [f"some/prefix/{stored.id}"]


def test_s3_missing_bucket_is_a_config_error(s3_env: S3Service, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        S3FileStorage.from_url("s3://no-such-bucket/files", staging_dir=tmp_path)
    message = str(caught.value)
    assert "no-such-bucket" in message and "does not exist" in message
    assert s3_env.endpoint_url in message and "\n" not in message
    assert "no-such-bucket" not in [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]


def test_s3_expiry_lists_markers_in_order(s3_bucket: str, s3_env: S3Service,
                                          tmp_path: Path) -> None:
    storage = S3FileStorage.from_url(f"s3://{s3_bucket}", staging_dir=tmp_path)
    now = time.time()
    files = {offset: storage.put(b"x", file_name="x", content_type="text/plain",
                                 expires_at=now + offset) for offset in (30, -20, 10, -10)}
    forever = storage.put(b"y", file_name="y", content_type="text/plain", expires_at=None)
    markers = s3_env.keys(s3_bucket, ".expiry/")
    assert [key.rsplit(".", 1)[1] for key in markers] == [
        files[offset].id for offset in (-20, -10, 10, 30)]
    assert storage.collect_expired(now) == 2
    assert storage.collect_expired(now) == 0
    assert storage.collect_expired(now + 15) == 1
    assert sorted(s3_env.keys(s3_bucket)) == sorted([files[30].id, forever.id, markers[3]])
    assert storage.delete(files[30].id) is True  # and its marker with it
    assert s3_env.keys(s3_bucket) == [forever.id]
    assert storage.collect_expired(now + 10**9) == 0
    assert storage.stat(forever.id) == forever


def test_s3_multipart_is_s3_multipart(s3_bucket: str, s3_env: S3Service,
                                      tmp_path: Path) -> None:
    storage = S3FileStorage.from_url(f"s3://{s3_bucket}/p", staging_dir=tmp_path)
    client = s3_env.client()
    chunks = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), b"tail"]
    upload = storage.create_multipart(file_name="clip.mp4", content_type="video/mp4",
                                      expires_at=time.time() + 3600)
    listed = client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    assert [item["Key"] for item in listed] == [f"p/.multipart/{upload.upload_id}"]
    etags = []
    for number in (3, 1, 2):
        part = tmp_path / f"part{number}"
        part.write_bytes(chunks[number - 1])
        etag = storage.put_part_path(upload.upload_id, number, part, move=True)
        etags.append((number, f'"{etag}"'))  # quoted, as clients send them back
        assert not part.exists()
    parts = client.list_parts(Bucket=s3_bucket, Key=listed[0]["Key"],
                              UploadId=listed[0]["UploadId"])["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * 1024 * 1024),
                                                             (2, 5 * 1024 * 1024), (3, 4)]
    with pytest.raises(InvalidParts, match="part 4 was not uploaded"):
        storage.complete_multipart(upload.upload_id, [*etags, (4, etags[0][1])])
    with pytest.raises(InvalidParts, match=r"part 1: etag .* does not match"):
        storage.complete_multipart(upload.upload_id, [(1, etags[0][1])])  # part 3's
    done = storage.complete_multipart(upload.upload_id, etags)
    whole = b"".join(chunks)
    assert (done.size, done.etag, done.file_name) == (len(whole), md5(whole), "clip.mp4")
    assert b"".join(storage.read(done.id)) == whole
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert s3_env.keys(s3_bucket, "p/.multipart/") == []
    head = client.head_object(Bucket=s3_bucket, Key=f"p/{done.id}")
    assert head["ContentType"] == "video/mp4" and head["ETag"].endswith('-3"')  # S3's own
    with pytest.raises(NotFound):
        storage.put_part(upload.upload_id, 4, b"late")

    small = storage.create_multipart(file_name="s", content_type="text/plain")
    small_etags = [(n, storage.put_part(small.upload_id, n, b"x" * n)) for n in (1, 2)]
    with pytest.raises(InvalidParts, match="part 1 has 1 bytes: S3 takes at least"):
        storage.complete_multipart(small.upload_id, small_etags)
    alone = storage.complete_multipart(small.upload_id, small_etags[1:])
    assert (b"".join(storage.read(alone.id)), alone.etag) == (b"xx", md5(b"xx"))


def test_s3_range_reads(s3_bucket: str, tmp_path: Path) -> None:
    storage = S3FileStorage.from_url(f"s3://{s3_bucket}", staging_dir=tmp_path)
    stored = storage.put(DATA, file_name="d", content_type="application/octet-stream")
    size = len(DATA)
    for start, end in ((0, None), (0, 1), (1000, 2000), (size - 5, None), (10, size * 2),
                       (size, None), (size + 10, size + 20), (7, 7), (9, 3)):
        assert b"".join(storage.read(stored.id, start, end)) == DATA[start:end], (start, end)
    empty = storage.put(b"", file_name="e", content_type="text/plain")
    assert (empty.size, b"".join(storage.read(empty.id))) == (0, b"")
    assert b"".join(storage.read(empty.id, 0, 10)) == b""
    with pytest.raises(NotFound):
        storage.read(new_id(), 5, 5)


def test_s3_large_file_streams_both_ways(s3_bucket: str, tmp_path: Path) -> None:
    """Past boto3's multipart threshold (8 MiB) the upload goes in parts; the md5 is still
    the content's, and reads come back in chunks."""
    storage = S3FileStorage.from_url(f"s3://{s3_bucket}", staging_dir=tmp_path / "staging")
    source = tmp_path / "large.bin"
    data = os.urandom(12 * 1024 * 1024 + 3)
    source.write_bytes(data)
    stored = storage.put_path(source, file_name="large.bin", content_type="x/y")
    assert source.exists() and (stored.size, stored.etag) == (len(data), md5(data))
    assert storage.stat(stored.id) == stored
    chunks = list(storage.read(stored.id))
    assert len(chunks) > 1 and max(map(len, chunks)) <= 1024 * 1024
    assert b"".join(chunks) == data
