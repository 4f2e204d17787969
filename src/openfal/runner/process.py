"""The runner: a separate OS process that hosts one App.

Started by the gateway with one end of a socketpair. It imports the app, runs ``setup()``
once, says ``ready``, then serves ``run`` messages, up to ``max_multiplexing`` at a time.
Sync endpoints run in worker threads, async ones as tasks. ``print``/``logging``/``warnings``
output and progress calls are sent back tagged with the request id. Output that belongs to
no request (importing the app, ``setup()``, any module imported later, threads of its own)
goes to the runner's stderr, the server's log. When the gateway goes away (the channel
closes) the runner exits at once, so a request never outlives the gateway that handed it
out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import io
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pydantic_core
from pydantic import ValidationError

from openfal.app.app import App, EndpointSpec
from openfal.app.context import RequestContext, current_request, set_current_request
from openfal.app.encoding import decode_input, encode_output
from openfal.app.errors import (
    AppException,
    ModelUnavailable,
    RequestCancelled,
    validation_detail,
)
from openfal.app.inputs import fetch_inputs, may_hold_files
from openfal.app.loader import load_app
from openfal.app.media import configure as configure_media
from openfal.compat import install_sdk, is_sdk_app
from openfal.runner.batcher import Batcher
from openfal.runner.environment import media_config_from_environment
from openfal.runner.protocol import (
    Cancel,
    Message,
    Ready,
    Result,
    Run,
    SetupFailed,
    Stop,
    encode,
    read_message,
)
from openfal.runner.template import library_modules
from openfal.upstream.placement import is_routed_only

# Where the import system runs a module's body: output from below these frames is the
# module's, however deep in a request the import happened.
_IMPORT_FRAMES = frozenset({"<frozen importlib._bootstrap>",
                            "<frozen importlib._bootstrap_external>"})


def upstream_router() -> ModuleType:
    """The upstream router, imported only by a runner that routes: with httpx and its
    client it is about a third of a runner's import time."""
    from openfal.upstream import router
    return router

log = logging.getLogger(__name__)


def _request_for_output() -> RequestContext | None:
    """The request that output produced now belongs to: the current one, unless a module is
    being imported. Libraries print notices while they load (transformers' torchvision
    notice, deprecations), once per process, and that is not the request's doing: it would
    land in the logs of whichever request happened to import them first."""
    ctx = current_request()
    if ctx is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_FRAMES:
            return None
        frame = frame.f_back
    return ctx


class _RequestOutput(io.TextIOBase):
    """Routes writes made while serving a request into that request's logs."""

    def __init__(self, original: Any, level: str):
        self._original = original
        self._level = level
        self._partial: dict[str, str] = {}
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        ctx = _request_for_output()
        if ctx is None:
            return self._original.write(text)
        with self._lock:
            pending = self._partial.pop(ctx.request_id, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[ctx.request_id] = rest
        for line in lines:
            ctx.log(line, level=self._level)
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def finish(self, ctx: RequestContext) -> None:
        with self._lock:
            rest = self._partial.pop(ctx.request_id, None)
        if rest:
            ctx.log(rest, level=self._level)


_SERVER_ERROR = (500, b'{"detail":"Internal Server Error","error_type":"runner_server_error"}',
                 {})

# The log levels the official clients declare: WARN, not WARNING; no CRITICAL.
_CLIENT_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}


class _RequestLogHandler(logging.Handler):
    def __init__(self, fallback: Any):
        super().__init__()
        self._fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        ctx = _request_for_output()
        message = self.format(record)
        if ctx is None:
            self._fallback.write(message + "\n")
        else:
            ctx.log(message, level=_CLIENT_LEVELS.get(record.levelname, record.levelname))


def capture_output() -> tuple[_RequestOutput, _RequestOutput]:
    """Route ``print``, ``warnings`` and ``logging`` output to the request it belongs to.

    Done before the app is imported, so that the handlers libraries make at import time
    (bound to the ``sys.stderr`` of that moment) route their output the same way."""
    fallback = sys.stderr
    outputs = _RequestOutput(sys.stdout, "INFO"), _RequestOutput(sys.stderr, "STDERR")
    sys.stdout, sys.stderr = outputs
    handler = _RequestLogHandler(fallback)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return outputs


class Runner:
    def __init__(self, app_cls: type[App], writer: asyncio.StreamWriter,
                 outputs: tuple[_RequestOutput, _RequestOutput], *, report_modules: bool):
        self.app_cls = app_cls
        # Whether its Ready lists the library modules it imported: a spawned runner's list
        # may start its environment's template. A forked one's would not be used, and
        # listing touches every module object, each a copy-on-write page fault after a fork
        # (a quarter of a second with torch imported).
        self.report_modules = report_modules
        self.app = app_cls()
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.requests: dict[str, tuple[RequestContext, asyncio.Task]] = {}
        self.executor = ThreadPoolExecutor(max_workers=app_cls.max_multiplexing + 1,
                                           thread_name_prefix="openfal-endpoint")
        self.stdout, self.stderr = outputs
        # Set when setup() found the model missing and upstreams are configured: the runner
        # starts anyway and forwards what an upstream serves (see run_endpoint).
        self.unavailable: ModelUnavailable | None = None
        self.forwarding: set[str] = set()  # requests of sync endpoints now at an upstream
        # A routed endpoint's upstream fetches the files itself.
        self.prefetch = app_cls.prefetch_inputs and not is_routed_only(app_cls)
        batch_lock = asyncio.Lock()
        self.batchers = {
            spec.path: Batcher(spec.batch, functools.partial(self.call, getattr(
                self.app, spec.method_name)), batch_lock, self._flush_output)
            for spec in app_cls.endpoints().values() if spec.batch is not None}

    def send(self, message: Message) -> None:
        frame = encode(message)
        if threading.get_ident() == self.loop_thread:
            self.writer.write(frame)
        else:
            self.loop.call_soon_threadsafe(self.writer.write, frame)

    async def call(self, fn: Any, *args: Any) -> Any:
        if asyncio.iscoroutinefunction(fn):
            return await fn(*args)
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, _with_context(fn), *args)

    async def start(self) -> bool:
        try:
            await self.call(self.app.setup)
        except ModelUnavailable as exc:
            if not upstream_router().upstreams_configured():
                return await self.setup_failed(exc)
            self.unavailable = exc
        except AppException as exc:
            return await self.setup_failed(exc)
        except BaseException:
            return await self.setup_failed(None)
        modules = library_modules(self.app_cls.__module__) if self.report_modules else []
        self.send(Ready(self.hints(), os.getpid(), modules))
        return True

    async def setup_failed(self, exc: AppException | None) -> bool:
        """Report a failed setup: an app's own answer (missing weights, say) is passed on;
        anything else is logged here with its traceback and reported in one line (callers
        get a reason, not the runner's source)."""
        if exc is None:
            log.exception("setup() failed")
            reason = traceback.format_exc().strip().splitlines()[-1]
            self.send(SetupFailed(f"setup() failed: {reason}"[:500]))
        else:
            self.send(SetupFailed(exc.message, exc.status_code,
                                  pydantic_core.to_json(exc.to_body())))
        await self.writer.drain()
        return False

    def hints(self) -> list[str]:
        try:
            return list(self.app.provide_hints())
        except Exception:
            return []

    def on_run(self, message: Run) -> None:
        request_id = message.id
        ctx = RequestContext(request_id, message.path, message.headers, self.send,
                             streaming=message.stream, encoding=message.encoding,
                             saved_state=message.state, endpoint_id=message.endpoint_id)
        task = self.loop.create_task(self.serve(ctx, message.path, message.body))
        self.requests[request_id] = (ctx, task)
        task.add_done_callback(lambda _: self.requests.pop(request_id, None))

    def on_cancel(self, message: Cancel) -> None:
        entry = self.requests.get(message.id)
        if entry is None:
            return
        ctx, task = entry
        ctx.cancel()
        if (batcher := self.batchers.get(ctx.endpoint)) is not None:
            batcher.cancel(ctx.request_id)
        elif self.app_cls.endpoints()[ctx.endpoint].is_async or ctx.request_id in self.forwarding:
            task.cancel()

    async def serve(self, ctx: RequestContext, path: str, body: bytes) -> None:
        set_current_request(ctx)
        spec = self.app_cls.endpoints().get(path)
        try:
            status, payload, headers = await self.invoke(ctx, spec, body)
        except Exception:
            # Every request gets an answer, even when reporting its failure failed.
            ctx.log(traceback.format_exc(), level="ERROR")
            status, payload, headers = _SERVER_ERROR
        finally:
            self._flush_output(ctx)
        if ctx.billable_units is not None:
            headers = {**headers, "x-fal-billable-units": f"{ctx.billable_units:g}"}
        self.send(Result(ctx.request_id, status, payload, headers, self.hints()))

    def _flush_output(self, ctx: RequestContext) -> None:
        """What ``ctx``'s code printed without a final newline, as its last log lines."""
        self.stdout.finish(ctx)
        self.stderr.finish(ctx)

    async def invoke(self, ctx: RequestContext, spec: EndpointSpec | None,
                     body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """Run the endpoint: (HTTP status, JSON body, response headers)."""
        if spec is None:
            return 404, b'{"detail":"Not Found"}', {}
        scratch: Path | None = None
        try:
            args = []
            if spec.input_model is not None:
                payload = decode_input(spec.input_model, body, ctx.encoding)
                ctx.sync_mode = getattr(payload, "sync_mode", False) is True
                if self.prefetch and may_hold_files(spec.input_model):
                    scratch = Path(tempfile.mkdtemp(prefix="openfal-request-"))
                    await self.call(fetch_inputs, payload, scratch)
                args.append(payload)
            output = await self.run_endpoint(ctx, spec, args)
            return 200, encode_output(output, ctx.encoding), {}
        except ValidationError as exc:
            return 422, pydantic_core.to_json({"detail": validation_detail(exc)}), {}
        except AppException as exc:
            return exc.status_code, pydantic_core.to_json(exc.to_body()), exc.headers
        except (RequestCancelled, asyncio.CancelledError):
            if ctx.is_cancelled:
                return 499, b'{"detail":"Request cancelled","error_type":"client_cancelled"}', {}
            # Cancelled by the app's own code, not by the caller: a failure like any other.
            ctx.log(traceback.format_exc(), level="ERROR")
            return _SERVER_ERROR
        except Exception as exc:
            ctx.log(traceback.format_exc(), level="ERROR")
            if _is_device_failure(exc):
                return 503, pydantic_core.to_json(
                    {"detail": f"Runner unhealthy: {exc}", "error_type": "runner_unhealthy"}), {}
            return _SERVER_ERROR
        finally:
            if scratch is not None:
                # After the answer: serve() sends it before this loop turn ends. Off the
                # loop, as removing a large input can take a while.
                self.loop.call_soon(self.loop.run_in_executor, None, functools.partial(
                    shutil.rmtree, scratch, ignore_errors=True))

    async def run_endpoint(self, ctx: RequestContext, spec: EndpointSpec,
                           args: list[Any]) -> Any:
        """The endpoint's output; where its model is missing here (``ModelUnavailable``) and
        an upstream serves the endpoint, the upstream's."""
        try:
            if self.unavailable is not None:
                # Without its old traceback: raising one instance again and again would
                # chain every request's frames (and inputs) onto it.
                raise self.unavailable.with_traceback(None)
            if (batcher := self.batchers.get(spec.path)) is not None:
                return await batcher.submit(ctx, args[0])
            return await self.call(getattr(self.app, spec.method_name), *args)
        except ModelUnavailable as exc:
            if not upstream_router().upstream_serves(ctx.endpoint_id):
                raise
            ctx.log(f"{exc.message} Forwarding the request to the upstream instead.")
        self.forwarding.add(ctx.request_id)
        try:
            return await upstream_router().forward(ctx, ctx.endpoint_id,
                                                   args[0] if args else None)
        finally:
            self.forwarding.discard(ctx.request_id)

    async def drain_and_stop(self) -> None:
        tasks = [task for _, task in self.requests.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.call(self.app.teardown)
        finally:
            await self.writer.drain()


def _with_context(fn: Any) -> Any:
    ctx = contextvars.copy_context()
    return lambda *args: ctx.run(fn, *args)


def _is_device_failure(exc: Exception) -> bool:
    """Errors after which the process's device state cannot be trusted (CUDA OOM and kin)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in ("OutOfMemoryError", "CUDA error", "cuDNN error"))


async def _main(app_ref: str, fd: int, forked: bool) -> int:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    configure_media(media_config_from_environment())
    outputs = capture_output()
    app_cls = load_app(app_ref)
    if is_sdk_app(app_cls):
        install_sdk()  # ``import fal`` in setup() and endpoints too
    runner = Runner(app_cls, writer, outputs, report_modules=not forked)
    if not await runner.start():
        return 1
    while True:
        message = await read_message(reader)
        if message is None:
            # The gateway is gone: stop now, whatever is still running.
            os._exit(0)
        if isinstance(message, Run):
            runner.on_run(message)
        elif isinstance(message, Cancel):
            runner.on_cancel(message)
        elif isinstance(message, Stop):
            await runner.drain_and_stop()
            return 0


def run_runner(app_ref: str, fd: int, *, forked: bool = False) -> NoReturn:
    """Serve ``app_ref`` on the gateway's socket ``fd`` until told to stop, then exit (a
    spawned runner's ``main``, and a ``forked`` one's: runner/template.py)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    code = asyncio.run(_main(app_ref, fd, forked))
    sys.stdout.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="openfal-runner")
    parser.add_argument("--app", required=True)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    run_runner(args.app, args.fd)
