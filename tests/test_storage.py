"""File storage: the official clients' upload flows, serving, expiry, and the local store."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from openfal.files import FileTooLarge, InvalidParts, LocalFileStorage, NotFound
from openfal.files.local import new_id, valid_id
from openfal.files.signing import Signer
from openfal.gateway.http import HTTPError
from openfal.gateway.storage_routes import spool

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
    key = files_server.data_dir / "storage.key"
    assert key.stat().st_mode & 0o777 == 0o600
    expired, _ = Signer.from_file(key).issue_token(time.time() - 7200, 3600)
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


# The local store itself
def test_local_storage_validates_ids(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files")
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


def test_local_storage_round_trip(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files")
    stored = storage.put(DATA, file_name="a.bin", content_type="application/octet-stream")
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

    upload = storage.create_multipart(file_name="m", content_type="text/plain")
    etags = {n: storage.put_part(upload.upload_id, n, chunk)
             for n, chunk in ((2, b"world"), (1, b"hello "))}
    with pytest.raises(FileTooLarge):
        storage.complete_multipart(upload.upload_id, list(etags.items()), max_size=5)
    done = storage.complete_multipart(upload.upload_id, [(2, etags[2]), (1, etags[1])])
    assert done.id == upload.file_id
    assert b"".join(storage.read(done.id)) == b"hello world"

    assert storage.delete(stored.id) is True
    assert storage.stat(stored.id) is None


def test_local_storage_collects_expired_and_abandoned(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files", abandon_after=60)
    now = time.time()
    gone = storage.put(b"a", file_name="a", content_type="text/plain", expires_at=now + 5)
    kept = storage.put(b"b", file_name="b", content_type="text/plain", expires_at=None)
    abandoned = storage.create_multipart(file_name="c", content_type="text/plain")
    assert storage.collect_expired(now) == 0
    assert storage.collect_expired(now + 10) == 1
    assert storage.stat(gone.id) is None and storage.stat(kept.id) == kept
    assert not (tmp_path / "files" / gone.id).exists()
    storage.collect_expired(now + 120)
    with pytest.raises(NotFound):
        storage.put_part(abandoned.upload_id, 1, b"late")
