"""The ``openfal`` command as a client of a running server: ``run``, ``apps`` and ``runners``."""

from __future__ import annotations

import functools
import json
import mimetypes
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, ParamSpec
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from httpx_sse import connect_sse
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from openfal.auth.credentials import authorization
from openfal.cli.console import stderr, stdout, table
from openfal.cli.target import Target
from openfal.fetch import FetchError, parse_data_uri

P = ParamSpec("P")

TIMEOUT = httpx.Timeout(30.0, read=60.0)  # the status stream sends a keep-alive every 15 s
EXIT_INTERRUPTED = 130
LEVEL_STYLES = {"DEBUG": "dim", "WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red"}


class CLIError(Exception):
    """A failure to report in one message, with exit status 1."""


def reports_errors(command: Callable[P, int]) -> Callable[P, int]:
    """Turn a ``CLIError`` raised by ``command`` into its message on stderr and status 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return command(*args, **kwargs)
        except CLIError as exc:
            stderr.print(Text(str(exc), style="red"))
            return 1

    return wrapper


@contextmanager
def connect(target: Target) -> Iterator[httpx.Client]:
    """A client for ``target`` sending its key; failing to reach the server, trust its
    certificate or have the key accepted becomes one clear ``CLIError``."""
    key = target.key.secret if target.key else None
    try:
        with httpx.Client(base_url=target.url, timeout=TIMEOUT, verify=target.verify(),
                          headers=authorization(key),
                          event_hooks={"response": [functools.partial(_refused, target)]},
                          ) as client:
            yield client
    except httpx.TransportError as exc:
        untrusted = _certificate_failure(exc)
        if untrusted is not None:
            raise CLIError(f"the certificate of {target.url} is not trusted ({untrusted}): "
                           f"{target.untrusted_hint()}") from None
        raise CLIError(f"cannot reach openfal at {target.url}") from None


def _refused(target: Target, response: httpx.Response) -> None:
    if response.status_code == 401:
        response.read()
        raise CLIError(f"{error_message(response)}; {target.key_hint()}")


def _certificate_failure(exc: BaseException) -> str | None:
    """Why the server's certificate failed verification, if that is what ``exc`` is."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or str(cause)
        cause = cause.__cause__ or cause.__context__
    return None


# --- input ---------------------------------------------------------------------------------


def build_input(input_json: str | None, args: list[str]) -> dict[str, Any]:
    """The request body: ``--input`` (JSON text, or ``@file``), then each ``key=value`` over it."""
    payload = _input_object(input_json) if input_json is not None else {}
    for arg in args:
        key, value = parse_arg(arg)
        payload[key] = value
    return payload


def _input_object(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise CLIError(f"cannot read --input file: {exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--input is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CLIError("--input must be a JSON object")
    return value


def parse_arg(arg: str) -> tuple[str, Any]:
    """``key=value``: the value as JSON where it parses as JSON, else as the string itself."""
    key, sep, text = arg.partition("=")
    if not sep or not key:
        raise CLIError(f"--arg {arg!r} is not of the form key=value")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


# --- errors --------------------------------------------------------------------------------


def error_message(response: httpx.Response) -> str:
    """What an error answer says: its detail (each field error on a line) and error type."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    detail = body.get("detail")
    error_type = body.get("error_type") or response.headers.get("x-fal-error-type")
    suffix = f" ({error_type})" if error_type else ""
    if isinstance(detail, list):
        lines = [f"  {_field_location(item)}: {item.get('msg')}" for item in detail
                 if isinstance(item, dict)]
        return "\n".join([f"invalid input{suffix}:", *lines])
    return f"{detail}{suffix}"


def _field_location(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", []))


def _checked(response: httpx.Response, failure: str = "") -> httpx.Response:
    if not response.is_success:
        raise CLIError(failure + error_message(response))
    return response


# --- run -----------------------------------------------------------------------------------


class StatusDisplay:
    """The live view of a request on stderr: queue position, step k of n, and its logs."""

    def __init__(self) -> None:
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[steps]}"), TimeElapsedColumn(),
            console=stderr, transient=True, disable=not stderr.is_terminal)
        self.task = self.progress.add_task("submitted", total=None, steps="")
        self.logs_seen: set[tuple[Any, ...]] = set()

    def __enter__(self) -> StatusDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def update(self, status: dict[str, Any]) -> None:
        self._print_new_logs(status.get("logs") or [])
        state = status.get("status")
        if state == "IN_QUEUE":
            self.progress.update(self.task, description=self._queued(status), total=None,
                                 completed=0, steps="")
        elif state == "IN_PROGRESS":
            self._running(status.get("progress"))

    @staticmethod
    def _queued(status: dict[str, Any]) -> str:
        position = status.get("queue_position")
        return "queued" if position is None else f"queued, position {position}"

    def _running(self, progress: dict[str, Any] | None) -> None:
        if progress is None:
            self.progress.update(self.task, description="running", total=None, steps="")
            return
        step, total = progress.get("step", 0), progress.get("total")
        message = progress.get("message")
        self.progress.update(
            self.task, description=f"running: {message}" if message else "running",
            total=total, completed=step, steps=f"{step}/{total}" if total else str(step))

    def _print_new_logs(self, logs: list[dict[str, Any]]) -> None:
        """Print the lines not printed yet; an event may repeat earlier lines or not."""
        for entry in logs:
            key = tuple(entry.get(field) for field in ("timestamp", "source", "level", "message"))
            if key not in self.logs_seen:
                self.logs_seen.add(key)
                stderr.print(format_log(entry), soft_wrap=True)


def format_log(entry: dict[str, Any]) -> Text:
    level = str(entry.get("level", "INFO"))
    when = datetime.fromisoformat(entry["timestamp"]).astimezone().strftime("%H:%M:%S")
    return Text.assemble((when, "dim"), " ", (f"{level:<7}", LEVEL_STYLES.get(level, "")),
                         " ", str(entry.get("message", "")).rstrip("\n"))


def submit(client: httpx.Client, endpoint_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return _checked(client.post(f"/queue/{endpoint_id}", json=payload)).json()


def follow(client: httpx.Client, status_url: str, display: StatusDisplay) -> dict[str, Any]:
    """Follow the status stream until the request completes; its last status."""
    with connect_sse(client, "GET", f"{status_url}/stream", params={"logs": "1"}) as source:
        if not source.response.is_success:
            source.response.read()
            raise CLIError(error_message(source.response))
        for event in source.iter_sse():
            status = json.loads(event.data)
            display.update(status)
            if status.get("status") == "COMPLETED":
                return status
    raise CLIError("the status stream ended before the request completed")


def cancel(client: httpx.Client, cancel_url: str) -> None:
    response = client.put(cancel_url)
    if response.status_code == 202:
        stderr.print("cancellation requested", style="yellow")
    else:
        stderr.print("the request had already completed", style="yellow")


def print_result(result: Any, as_json: bool) -> None:
    print(json.dumps(result) if as_json else json.dumps(result, indent=2, ensure_ascii=False))


@reports_errors
def run_command(target: Target, endpoint_id: str, input_json: str | None, args: list[str],
                output_dir: Path | None, as_json: bool) -> int:
    """``openfal run``: submit through the queue, watch it, print (and save) the result."""
    payload = build_input(input_json, args)
    with connect(target) as client:
        submitted_at = time.monotonic()
        queued = submit(client, endpoint_id, payload)
        stderr.print(f"request {queued['request_id']}", style="dim")
        try:
            with StatusDisplay() as display:
                display.update(queued)
                final = follow(client, queued["status_url"], display)
        except KeyboardInterrupt:
            cancel(client, queued["cancel_url"])
            return EXIT_INTERRUPTED
        _print_times(time.monotonic() - submitted_at, final)
        result = _checked(client.get(queued["response_url"]), "request failed: ").json()
        print_result(result, as_json)
        if output_dir is not None:
            for path in download_files(client, result, output_dir):
                stderr.print(f"saved {path}")
    return 0


def _print_times(total: float, status: dict[str, Any]) -> None:
    """The wait as the caller saw it, and the part the runner spent on the request: the
    whole endpoint call (the queue's ``metrics.inference_time``), which includes loading a
    model on first use, so it can exceed what an app reports in its own ``timings``."""
    on_runner = (status.get("metrics") or {}).get("inference_time")
    if on_runner is None:
        stderr.print(f"done in {total:.2f}s", style="dim")
    else:
        stderr.print(f"done in {total:.2f}s, {on_runner:.2f}s of it on the runner "
                     f"(the whole endpoint call, model loading included)", style="dim")


# --- files ---------------------------------------------------------------------------------


def file_objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every object in ``value``, however deep, that has a ``url``: fal's file objects."""
    if isinstance(value, dict):
        if isinstance(value.get("url"), str):
            yield value
            return
        for item in value.values():
            yield from file_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from file_objects(item)


def download_files(client: httpx.Client, result: Any, directory: Path) -> list[Path]:
    """Save each file object of ``result`` into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    for index, file in enumerate(file_objects(result)):
        url = file["url"]
        target = _unique_path(directory / _file_name(file, index))
        if url.startswith("data:"):
            target.write_bytes(decode_data_uri(url))
        else:
            _download(client, urljoin(str(client.base_url), url), target)
        saved.append(target)
    return saved


def _file_name(file: dict[str, Any], index: int) -> str:
    """The file's own name (never a path), else the URL's last part, else ``file-N.ext``."""
    url: str = file["url"]
    name = PurePosixPath(str(file.get("file_name") or "")).name
    if not name and not url.startswith("data:"):
        name = PurePosixPath(unquote(urlsplit(url).path)).name
    if name:
        return name
    content_type = file.get("content_type") or _data_uri_type(url)
    return f"file-{index}{mimetypes.guess_extension(content_type or '') or ''}"


def _unique_path(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def _data_uri_type(url: str) -> str | None:
    if not url.startswith("data:"):
        return None
    return url[len("data:"):].partition(",")[0].split(";")[0] or None


def decode_data_uri(uri: str) -> bytes:
    try:
        return parse_data_uri(uri).data
    except FetchError as exc:
        raise CLIError(f"malformed data URI {uri[:60]}: {exc}") from None


def _download(client: httpx.Client, url: str, target: Path) -> None:
    request = client.build_request("GET", url)
    if (request.url.scheme, request.url.netloc) != (client.base_url.scheme,
                                                     client.base_url.netloc):
        request.headers.pop("authorization", None)  # the key is for this server alone
    try:
        response = client.send(request, stream=True, follow_redirects=True)
        try:
            if not response.is_success:
                raise CLIError(f"cannot download {url}: HTTP {response.status_code}")
            with target.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot download {url}: {exc}") from None


# --- apps and runners ----------------------------------------------------------------------


@reports_errors
def apps_command(target: Target, as_json: bool) -> int:
    """``openfal apps``: the endpoints the server serves."""
    with connect(target) as client:
        listing = _checked(client.get("/api/apps")).json()
    if as_json:
        print(json.dumps(listing))
        return 0
    apps = table("endpoint", "app", "multiplexing", "keep alive", "schema")
    for endpoint in listing["endpoints"]:
        config = endpoint.get("config", {})
        apps.add_row(endpoint["endpoint_id"], endpoint.get("app_ref", "-"),
                     str(config.get("max_multiplexing", "")),
                     f"{config['keep_alive']}s" if "keep_alive" in config else "",
                     endpoint["openapi_url"])
    stdout.print(apps)
    return 0


@reports_errors
def runners_command(target: Target, as_json: bool) -> int:
    """``openfal runners``: the runner processes alive now."""
    with connect(target) as client:
        listing = _checked(client.get("/api/runners")).json()
    if as_json:
        print(json.dumps(listing))
        return 0
    if not listing["runners"]:
        stderr.print("no runners")
        return 0
    runners = table("runner", "app", "state", "pid", "gpus", "in flight", "started", "hints")
    for runner in listing["runners"]:
        started = datetime.fromtimestamp(runner["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        runners.add_row(runner["runner_id"], runner["app_id"], runner["state"],
                        str(runner.get("pid") or ""), ",".join(runner.get("gpus") or []),
                        "\n".join(runner["in_flight"]), started,
                        ", ".join(map(str, runner.get("hints") or [])))
    stdout.print(runners)
    return 0
