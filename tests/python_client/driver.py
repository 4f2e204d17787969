"""Run one scenario of the official ``fal-client`` against the server its environment names.

Usage: ``python driver.py SCENARIO [JSON_ARGS]``. The last line printed is the scenario's
result as JSON. The script is run unchanged under every installed client version, with
``PYTHONPATH`` pointing at one of them and the variables ``openfal env`` prints: nothing here
tells the client where the server is. It reports what the client returned (and what it
raised); ``tests/test_python_client.py`` asserts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.metadata
import inspect
import io
import json
import os
import random
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fal_module
import httpx
import msgpack
from PIL import Image

WORK = "openfal/work"
WAIT = "openfal/wait"
ECHO = "openfal/echo"
STRICT = "openfal/strict"
MEDIA = "openfal/media"
REALTIME = "openfal/realtime-echo"
PARTIALS = "openfal/work/partials"

Result = dict[str, Any]
SCENARIOS: dict[str, Callable[[dict[str, Any]], Result | Awaitable[Result]]] = {}


def scenario(fn: Callable[[dict[str, Any]], Result | Awaitable[Result]]):
    SCENARIOS[fn.__name__] = fn
    return fn


# --- describing what the client returned ---------------------------------------------------


def describe_status(status: fal_client.Status) -> Result:
    """A status object as plain data: its class and its fields."""
    return {"type": type(status).__name__, **vars(status)}


def describe_error(exc: BaseException) -> Result:
    """What an exception the client raised carries (HTTP errors: status, body, type)."""
    return {"class": type(exc).__name__, "str": str(exc),
            "status_code": getattr(exc, "status_code", None),
            "message": getattr(exc, "message", None),
            "error_type": getattr(exc, "error_type", None),
            "request_id": getattr(exc, "request_id", None)}


def raised(call: Callable[[], object]) -> Result:
    """Call; the error it raised, or what it returned when it did not raise."""
    try:
        returned = call()
    except fal_module.FalClientError as exc:
        return describe_error(exc)
    return {"class": None, "returned": returned}


async def raised_async(call: Callable[[], Awaitable[object]]) -> Result:
    try:
        returned = await call()
    except fal_module.FalClientError as exc:
        return describe_error(exc)
    return {"class": None, "returned": returned}


@functools.cache
def http() -> httpx.Client:
    """One plain httpx client for downloads, with the same environment (proxy, trust store)
    the fal client has."""
    return httpx.Client(timeout=60)


def download(url: str) -> Result:
    """GET ``url``: its status, content type, size and SHA-256 (read in chunks)."""
    digest = hashlib.sha256()
    size = 0
    with http().stream("GET", url) as response:
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return {"status": response.status_code,
                "content_type": response.headers.get("content-type"),
                "sha256": digest.hexdigest(), "size": size}


def fetch_bytes(url: str) -> bytes:
    response = http().get(url)
    response.raise_for_status()
    return response.content


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample_image() -> Image.Image:
    """A small image whose pixels tell its orientation."""
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    image.putpixel((0, 0), (0, 0, 255))
    return image


def png_sha256(image: Image.Image) -> str:
    """The SHA-256 of the PNG ``upload_image(image, format="png")`` sends."""
    with io.BytesIO() as buffer:
        image.save(buffer, format="png")
        return sha256(buffer.getvalue())


def describe_image(data: bytes) -> Result:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return {"size": list(image.size), "corners": [image.getpixel((0, 0)),
                                                  image.getpixel((image.width - 1, 0))]}


def frame(n: int) -> dict[str, Any]:
    """One realtime message: bytes that are not valid UTF-8 survive only as binary."""
    return {"image": bytes(range(256)) * 4 + bytes([n]), "n": n}


def describe_frame(sent: dict[str, Any], received: dict[str, Any] | None) -> Result:
    assert received is not None, "the connection closed instead of answering"
    image = received["image"]
    return {"n": received["n"], "size": received["size"], "is_bytes": isinstance(image, bytes),
            "reversed": image == sent["image"][::-1]}


# --- direct runs ---------------------------------------------------------------------------


@scenario
def run(args: dict[str, Any]) -> Result:
    version = importlib.metadata.version("fal-client")
    result: Result = {
        "version": version,
        "urls": {"run": fal_module.RUN_URL_FORMAT, "queue": fal_module.QUEUE_URL_FORMAT},
        "echo": fal_client.run(ECHO, {"prompt": args["prompt"]}),
        "edit": fal_client.run(WORK, {"message": args["prompt"]}, path="/edit"),
        "hinted": fal_client.run(WORK, {"message": "hinted"}, hint="some-hint",
                                 headers={"X-Custom": "1"}),
    }
    if "method" in inspect.signature(fal_client.run).parameters:
        result["get"] = fal_client.run(WORK, {}, method="GET")
        result["start_timeout"] = fal_client.run(WORK, {"message": "timed"}, start_timeout=30)
        explicit = fal_client.SyncClient(key=os.environ["FAL_KEY"])
        result["explicit_key"] = explicit.run(ECHO, {"prompt": "explicit"})
    return result


# --- the queue -----------------------------------------------------------------------------


@scenario
def queue(args: dict[str, Any]) -> Result:
    """submit, then the handle's status with logs, its events, get; then the same by id."""
    message = args["message"]
    handle = fal_client.submit(WORK, {"message": message, "seconds": 0.5, "steps": 5})
    first = handle.status(with_logs=True)
    events = [describe_status(event) for event in handle.iter_events(with_logs=True)]
    data = handle.get()
    return {"request_id": handle.request_id,
            "urls": [handle.status_url, handle.response_url, handle.cancel_url],
            "first": describe_status(first), "events": events, "result": data,
            "by_id": {
                "status": describe_status(fal_client.status(WORK, handle.request_id,
                                                            with_logs=True)),
                "result": fal_client.result(WORK, handle.request_id),
                "cancel": raised(lambda: fal_client.cancel(WORK, handle.request_id)),
            }}


@scenario
def cancel(args: dict[str, Any]) -> Result:
    """Cancel a running request with the handle, then the same request again by id."""
    handle = fal_client.submit(WAIT, {"seconds": 30})
    with contextlib.closing(handle.iter_events()) as events:
        before = describe_status(next(e for e in events if not isinstance(e, fal_client.Queued)))
    handle.cancel()
    final = [describe_status(e) for e in handle.iter_events(with_logs=True)][-1]
    return {"request_id": handle.request_id, "before": before, "final": final,
            "get": raised(handle.get),
            "result_by_id": raised(lambda: fal_client.result(WAIT, handle.request_id)),
            "cancel_again": raised(lambda: fal_client.cancel(WAIT, handle.request_id))}


@scenario
def subscribe(args: dict[str, Any]) -> Result:
    """subscribe with logs and callbacks, behind blockers that fill the app's every slot."""
    blockers = [fal_client.submit(WORK, {"message": "blocker", "seconds": 1.5})
                for _ in range(args["blockers"])]
    enqueued: list[str] = []
    updates: list[fal_client.Status] = []
    data = fal_client.subscribe(WORK, {"message": args["message"], "seconds": 0.3, "steps": 3},
                                with_logs=True, on_enqueue=enqueued.append,
                                on_queue_update=updates.append)
    return {"enqueued": enqueued, "result": data,
            "updates": [describe_status(update) for update in updates],
            "blockers": [handle.get()["message"] for handle in blockers]}


@scenario
def client_timeout(args: dict[str, Any]) -> Result:
    """subscribe(client_timeout=...) gives up, cancels the request and raises."""
    enqueued: list[str] = []
    outcome = raised(lambda: fal_client.subscribe(
        WORK, {"message": "too slow", "seconds": 20, "steps": 200}, client_timeout=2,
        on_enqueue=enqueued.append))
    handle = fal_client.SyncClient().get_handle(WORK, enqueued[0])
    final = [describe_status(e) for e in handle.iter_events()][-1]
    return {"request_id": enqueued[0], "raised": outcome, "final": final}


@scenario
def stream(args: dict[str, Any]) -> Result:
    return {"events": list(fal_client.stream(PARTIALS, {"steps": args["steps"]}))}


@scenario
def errors(args: dict[str, Any]) -> Result:
    """How the client reports the server's errors."""
    failed = fal_client.submit(WORK, {"message": "to fail", "fail": "error"})
    final = [describe_status(e) for e in failed.iter_events()][-1]
    wrong_key = fal_client.SyncClient(key="nobody:nothing")
    return {
        "run_422": raised(lambda: fal_client.run(STRICT, {"prompt": "x", "bogus": 1})),
        "submit_422": raised(lambda: fal_client.submit(STRICT, {"prompt": "x", "extra": 2})),
        "run_500": raised(lambda: fal_client.run(WORK, {"fail": "error"})),
        "failed_status": final,
        "failed_get": raised(failed.get),
        "failed_result_by_id": raised(lambda: fal_client.result(WORK, failed.request_id)),
        "cancel_completed": raised(failed.cancel),
        "unknown_id": raised(lambda: fal_client.status(WORK, "0" * 32)),
        "wrong_key": raised(lambda: wrong_key.run(ECHO, {"prompt": "x"})),
    }


# --- files ---------------------------------------------------------------------------------


@scenario
def upload(args: dict[str, Any]) -> Result:
    """upload (bytes), upload_file, upload_image; each URL downloaded and used as an input."""
    text = args["text"].encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "notes.csv"
        path.write_bytes(text + b",file")
        file_url = fal_client.upload_file(path)
    bytes_url = fal_client.upload(text, "text/plain", "hello.txt")
    image_url = fal_client.upload_image(sample_image(), format="png")
    media = fal_client.run(MEDIA, {"document": bytes_url, "image": image_url})
    result: Result = {
        "bytes": {"url": bytes_url, "download": download(bytes_url),
                  "sha256": sha256(text), "content": fetch_bytes(bytes_url).decode()},
        "file": {"url": file_url, "download": download(file_url),
                 "content": fetch_bytes(file_url).decode()},
        "image": {"url": image_url, "download": download(image_url),
                  "sha256": png_sha256(sample_image()),
                  "image": describe_image(fetch_bytes(image_url))},
        "media": {"document": media["document"], "image": media["image"],
                  "flipped": describe_image(fetch_bytes(media["flipped"]["url"]))},
    }
    if "repository" in inspect.signature(fal_client.upload).parameters:
        storage_url = fal_client.upload(text, "text/plain", "stored.txt", repository="fal")
        result["storage"] = {"url": storage_url, "download": download(storage_url),
                             "content": fetch_bytes(storage_url).decode()}
    return result


@scenario
def multipart(args: dict[str, Any]) -> Result:
    """An upload over the client's 100 MiB multipart threshold."""
    data = random.Random(args["seed"]).randbytes(args["size"])
    sent = sha256(data)
    url = fal_client.upload(data, "application/octet-stream", "big.bin")
    del data
    return {"url": url, "sent_sha256": sent, "download": download(url),
            "multipart": args["size"] > fal_module.MULTIPART_THRESHOLD}


@scenario
def encode(args: dict[str, Any]) -> Result:
    """encode/encode_file/encode_image make data URIs, which the server accepts as inputs."""
    text = args["text"].encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.txt"
        path.write_bytes(text)
        file_uri = fal_client.encode_file(path)
    image_uri = fal_client.encode_image(sample_image(), format="png")
    from_bytes = fal_client.run(MEDIA, {"document": fal_client.encode(text, "text/plain")})
    from_file = fal_client.run(MEDIA, {"document": file_uri, "image": image_uri})
    return {"sha256": sha256(text), "size": len(text),
            "uris": [uri.split(",", 1)[0] for uri in (file_uri, image_uri)],
            "from_bytes": from_bytes["document"], "from_file": from_file["document"],
            "image": from_file["image"]}


# --- realtime ------------------------------------------------------------------------------


@scenario
def realtime(args: dict[str, Any]) -> Result:
    """Two messages on one connection; with the default JWT, or ``use_jwt=False``."""
    options = {} if args["use_jwt"] else {"use_jwt": False}
    answers = []
    with fal_client.realtime(REALTIME, **options) as connection:
        for n in (1, 2):
            sent = frame(n)
            connection.send(sent)
            answers.append(describe_frame(sent, connection.recv()))
    return {"answers": answers}


@scenario
def ws_connect(args: dict[str, Any]) -> Result:
    """The raw websocket: the caller encodes and decodes the messages itself."""
    sent = frame(7)
    with fal_client.ws_connect(REALTIME, path="/realtime") as ws:
        ws.send(msgpack.packb(sent, use_bin_type=True))
        received = msgpack.unpackb(ws.recv(), raw=False)
    return {"answer": describe_frame(sent, received)}


# --- apps written with the hosted SDK (tests/test_sdk_apps.py) -----------------------------


@scenario
def sdk_apps(args: dict[str, Any]) -> Result:
    """The apps of shared/sdk-apps and tests/apps/sdk_own.py, each through the client."""
    image = sample_image().resize((32, 16))
    result: Result = {
        "greet": fal_client.run("openfal/greeter", {"name": "Ada", "times": 2}),
        "shout": fal_client.run("openfal/greeter", {"name": "Ada"}, path="/shout"),
        "blank": raised(lambda: fal_client.subscribe("openfal/greeter", {"name": "  "})),
        "count": fal_client.subscribe("openfal/counter", {"upto": 3}),
        "stream": list(fal_client.stream("openfal/counter", {"upto": 4})),
        "thumbnail": fal_client.subscribe("openfal/thumbnailer", {
            "image_url": fal_client.upload_image(image, format="png"), "max_side": 8}),
        "thumbnail_inline": fal_client.run("openfal/thumbnailer", {
            "image_url": fal_client.encode_image(image, format="png")}),
        "plural": fal_client.subscribe("openfal/pluralizer", {"word": "octopus"}),
        "plural_error": raised(lambda: fal_client.run("openfal/pluralizer", {"word": "4"})),
        "count_words": fal_client.run("openfal/pluralizer", {"word": "hey", "times": 3},
                                      path="/count"),
        "file": fal_client.run("openfal/pluralizer", {"word": "cat"}, path="/file"),
        "size": fal_client.run("openfal/pluralizer", {
            "image": fal_client.upload_image(image, format="png")}, path="/size"),
    }
    result["thumbnail_image"] = describe_image(fetch_bytes(result["thumbnail"]["image"]["url"]))
    with fal_client.realtime("openfal/counter") as connection:
        connection.send({"text": "stressed"})
        result["realtime"] = connection.recv()
    with fal_client.realtime("openfal/pluralizer") as connection:
        connection.send({"word": "abc"})
        result["realtime_stream"] = [connection.recv() for _ in range(3)]
    flux = [fal_client.subscribe("openfal/flux-schnell", {
        "prompt": "a red fox in the snow", "num_inference_steps": 2, "seed": 7})
        for _ in range(2)]
    result["flux"] = flux
    result["flux_images"] = [sha256(fetch_bytes(output["images"][0]["url"]))
                             for output in flux]
    return result


# --- the async client ----------------------------------------------------------------------


@scenario
async def async_queue(args: dict[str, Any]) -> Result:
    message = args["message"]
    handle = await fal_client.submit_async(WORK, {"message": message, "seconds": 0.3,
                                                  "steps": 3})
    events = [describe_status(event) async for event in handle.iter_events(with_logs=True)]
    data = await handle.get()
    updates: list[fal_client.Status] = []
    # A plain callback: 1.0.3 would also await a coroutine one, 0.10.0 would not.
    subscribed = await fal_client.subscribe_async(WORK, {"message": f"{message} again"},
                                                  with_logs=True,
                                                  on_queue_update=updates.append)
    running = await fal_client.submit_async(WAIT, {"seconds": 30})
    async with contextlib.aclosing(running.iter_events()) as running_events:
        async for event in running_events:
            if not isinstance(event, fal_client.Queued):
                break
    await running.cancel()
    cancelled = [describe_status(e) async for e in running.iter_events()][-1]
    return {
        "run": await fal_client.run_async(ECHO, {"prompt": message}),
        "request_id": handle.request_id, "events": events, "result": data,
        "status": describe_status(await handle.status(with_logs=True)),
        "by_id": {
            "status": describe_status(await fal_client.status_async(WORK, handle.request_id,
                                                                    with_logs=True)),
            "result": await fal_client.result_async(WORK, handle.request_id),
            "cancel": await raised_async(lambda: fal_client.cancel_async(WORK,
                                                                         handle.request_id)),
        },
        "subscribed": subscribed, "updates": [describe_status(u) for u in updates],
        "stream": [event async for event in fal_client.stream_async(PARTIALS, {"steps": 2})],
        "cancelled": cancelled, "cancelled_get": await raised_async(running.get),
        "run_422": await raised_async(lambda: fal_client.run_async(STRICT, {"bogus": 1})),
    }


@scenario
async def async_upload(args: dict[str, Any]) -> Result:
    text = args["text"].encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "async.txt"
        path.write_bytes(text)
        file_url = await fal_client.upload_file_async(path)
    bytes_url = await fal_client.upload_async(text, "text/plain", "async-bytes.txt")
    image_url = await fal_client.upload_image_async(sample_image(), format="png")
    return {"bytes": {"download": download(bytes_url),
                      "content": fetch_bytes(bytes_url).decode()},
            "file": {"download": download(file_url), "content": fetch_bytes(file_url).decode()},
            "image": {"download": download(image_url), "sha256": png_sha256(sample_image()),
                      "image": describe_image(fetch_bytes(image_url))},
            "sha256": sha256(text)}


@scenario
async def async_realtime(args: dict[str, Any]) -> Result:
    """The default JWT, and ``use_jwt=False`` (from 0.13.0) when asked; then ws_connect."""
    result: Result = {}
    for mode in args["modes"]:
        options = {"use_jwt": False} if mode == "key" else {}
        sent = frame(3)
        async with fal_client.realtime_async(REALTIME, **options) as connection:
            await connection.send(sent)
            result[mode] = describe_frame(sent, await connection.recv())
    sent = frame(4)
    async with fal_client.ws_connect_async(REALTIME, path="/realtime") as ws:
        await ws.send(msgpack.packb(sent, use_bin_type=True))
        result["raw"] = describe_frame(sent, msgpack.unpackb(await ws.recv(), raw=False))
    return result


def main() -> None:
    name = sys.argv[1]
    args = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    outcome = SCENARIOS[name](args)
    if inspect.isawaitable(outcome):
        outcome = asyncio.run(outcome)
    print(json.dumps(outcome, default=repr))


if __name__ == "__main__":
    main()
