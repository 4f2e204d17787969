"""``fal.App``, ``fal.endpoint`` and ``fal.realtime`` on openfal's app framework.

An SDK app class becomes an ``openfal.App``: its settings (class attributes and class
keyword arguments) are translated, and each endpoint method is wrapped so that what the SDK
allows beyond openfal's own endpoints works: several plain parameters instead of one
pydantic model, a ``StreamingResponse`` of server-sent events (each event but the last is a
partial result, the last one the result, as the clients read it), a ``Response`` whose JSON
body is the result, and ``x-fal-billable-units`` set on an injected ``Response``.
"""

from __future__ import annotations

import asyncio
import collections.abc
import functools
import inspect
import json
import re
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pydantic_core
from packaging.requirements import Requirement
from pydantic import BaseModel, create_model
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import openfal
from openfal.app import context
from openfal.app.errors import AppException
from openfal.compat.imports import SdkFeatureUnsupported
from openfal.files.lifecycle import PREFERENCE_HEADER

# Settings openfal applies as the hosted platform does.
_APPLIED = frozenset({
    "requirements", "local_python_modules", "machine_type", "num_gpus", "keep_alive",
    "min_concurrency", "max_concurrency", "max_multiplexing", "request_timeout",
    "startup_timeout", "app_auth", "secrets", "app_files"})
# Settings about the hosted fleet (where and how its machines run) that mean nothing on
# one's own machines: accepted, with no effect.
_FLEET_ONLY = frozenset({
    "regions", "metrics_port", "data_mounts", "scaling_delay", "concurrency_buffer",
    "concurrency_buffer_perc", "termination_grace_period_seconds", "app_files_ignore",
    "app_files_context_dir", "requirements_context_dir", "resolver", "_scheduler",
    "_scheduler_options"})
# Settings that change how requests are served in ways openfal does not implement.
_REFUSED = {
    "image": "container images (ContainerImage): openfal runs apps in Python environments",
    "kind": "app kinds other than the default (container apps)",
    "request_start_timeout": "an app-wide request_start_timeout (callers can send "
                             "X-Fal-Request-Timeout instead)",
    "skip_retry_conditions": "skip_retry_conditions",
    "retry_config": "retry_config",
}
_SETTINGS = _APPLIED | _FLEET_ONLY | frozenset(_REFUSED)
_PARTS = re.compile(r"[A-Z][a-z]*")


def app_name_of(class_name: str) -> str:
    """The SDK's default app name: ``FluxSchnell`` → ``flux-schnell``."""
    parts = _PARTS.findall(class_name)
    if parts:
        return "-".join(part.lower() for part in parts)
    return "-".join(part for part in class_name.lower().split("_") if part) or class_name.lower()


@dataclass
class RequestContext:
    """``self.current_request`` of an SDK app: the request being served."""

    request_id: str | None
    endpoint: str | None
    lifecycle_preference: dict[str, str] | None
    headers: dict[str, str] = field(default_factory=dict)
    upload_policy: None = None


class App(openfal.App):
    """Base class of apps written with the SDK (``class MyApp(fal.App, keep_alive=300)``)."""

    # The SDK's settings given as class keyword arguments, parents' included.
    _sdk_options: ClassVar[dict[str, Any]] = {}
    # SDK apps read their inputs' files themselves (``to_pil()``, ``download_file``).
    prefetch_inputs: ClassVar[bool] = False

    def __init_subclass__(cls, **options: Any) -> None:
        name = options.pop("name", None)
        unknown = sorted(set(options) - _SETTINGS - {"app_name"})
        if unknown:
            raise SdkFeatureUnsupported(f"{cls.__name__}: unknown App option(s) "
                                        f"{', '.join(unknown)}")
        cls._sdk_options = {**cls._sdk_options, **options}
        settings = {**_declared_settings(cls), **cls._sdk_options}
        for key, value in settings.items():
            if key in _REFUSED and value is not None:
                raise SdkFeatureUnsupported(f"{cls.__name__}: openfal does not support "
                                            f"{_REFUSED[key]}")
        if cls.__init__ is not App.__init__:
            raise ValueError("App classes should not override __init__ directly. "
                             "Use setup() instead.")
        applied = {key: value for key, value in settings.items()
                   if key in _APPLIED and value is not None}
        if applied.get("app_auth") == "shared":
            applied["app_auth"] = "private"  # callers use their own keys: any key does here
        applied["app_name"] = name or settings.get("app_name") or app_name_of(cls.__name__)
        applied["runtime_modules"] = _modules_named(applied.get("requirements", []))
        super().__init_subclass__(**applied)

    def __init__(self, *, _allow_init: bool = False) -> None:
        super().__init__()

    @property
    def current_request(self) -> RequestContext | None:  # type: ignore[override]
        ctx = context.current_request()
        if ctx is None:
            return None
        lifecycle = ctx.headers.get(PREFERENCE_HEADER)
        return RequestContext(ctx.request_id, ctx.endpoint, _json_object(lifecycle),
                              dict(ctx.headers))

    def health(self) -> Any:
        return {}

    def handle_exit(self) -> None:
        """Called by the SDK on SIGTERM; openfal stops runners by draining them instead."""


def _declared_settings(cls: type) -> dict[str, Any]:
    """The SDK settings set as class attributes on ``cls`` or its SDK parents."""
    settings: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, App) and klass is not App:
            settings.update({key: value for key, value in vars(klass).items()
                             if key in _SETTINGS or key == "app_name"})
    return settings


def _modules_named(requirements: list[Any]) -> tuple[str, ...]:
    """The modules an app's requirements would install, guessed by their names (``torch``,
    ``diffusers``): what its runner template imports before forking its runners."""
    specs = [spec for step in requirements
             for spec in ([step] if isinstance(step, str) else step)]
    return tuple(sorted({Requirement(spec).name.lower().replace("-", "_") for spec in specs}))


def _json_object(text: str | None) -> dict[str, str] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# Endpoints


def endpoint(path: str, *, is_websocket: bool = False, health_check: Any = None,
             billing: Any = None) -> Callable[[Callable], Callable]:
    """Mark a method as the endpoint at ``path`` (the SDK's ``@fal.endpoint``)."""
    if is_websocket:
        raise SdkFeatureUnsupported(
            f"@fal.endpoint({path!r}, is_websocket=True): raw websocket endpoints are not "
            f"supported by openfal; use @fal.realtime")
    if health_check is not None:
        raise SdkFeatureUnsupported(f"@fal.endpoint({path!r}, health_check=...): runner "
                                    f"health checks are not supported by openfal")
    declaration = _billing_declaration(path, billing)

    def mark(fn: Callable) -> Callable:
        wrapped = as_openfal_endpoint(fn)
        wrapped.billing_declaration = declaration  # type: ignore[attr-defined]
        return openfal.endpoint(path)(wrapped)

    return mark


def realtime(path: str, *, buffering: int | None = None, session_timeout: float | None = None,
             input_modal: Any = ..., output_modal: Any = ..., max_batch_size: int = 1,
             content_type: str = "application/msgpack", encode_message: Any = None,
             decode_message: Any = None) -> Callable[[Callable], Callable]:
    """Mark a method as a realtime endpoint (the SDK's ``@fal.realtime``): msgpack messages
    over a websocket, one answer per input; an endpoint that yields answers sends each one."""
    refused = [name for name, given in (
        ("max_batch_size", max_batch_size != 1),
        ("content_type", content_type != "application/msgpack"),
        ("encode_message", encode_message is not None),
        ("decode_message", decode_message is not None),
        ("input_modal", input_modal is not ...), ("output_modal", output_modal is not ...),
    ) if given]
    if refused:
        raise SdkFeatureUnsupported(f"@fal.realtime({path!r}): openfal does not support "
                                    f"{', '.join(refused)}")
    timeout = {} if session_timeout is None else {"session_timeout": session_timeout}

    def mark(fn: Callable) -> Callable:
        if _iterator_item(_hints(fn).get(_first_input(fn) or "", None)) is not None:
            raise SdkFeatureUnsupported(f"@fal.realtime({path!r}) {fn.__name__}: streamed "
                                        f"inputs (client or bidirectional streaming) are not "
                                        f"supported by openfal")
        return openfal.realtime(path, **timeout)(as_openfal_endpoint(fn))

    return mark


def _billing_declaration(path: str, billing: Any) -> dict[str, Any] | None:
    """What ``billing`` declares, checked as the SDK checks it."""
    if billing is None:
        return None
    if isinstance(billing, type) or not callable(getattr(billing, "declaration", None)):
        raise TypeError("billing must be an object with a declaration() method")
    declared = billing.declaration()
    if not isinstance(declared, dict) or set(declared) != {"version", "schema_id", "app"} \
            or not isinstance(declared["app"], dict) or declared["app"].get("type") != "object":
        raise ValueError(f"billing declaration for {path!r} must have exactly version, "
                         f"schema_id and app (an object JSON Schema)")
    return declared


def _hints(fn: Callable) -> dict[str, Any]:
    return typing.get_type_hints(fn)


def _first_input(fn: Callable) -> str | None:
    params = [p for p in list(inspect.signature(fn).parameters.values())[1:]
              if not _is_injected(_hints(fn).get(p.name))]
    return params[0].name if params else None


def _is_injected(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Request | Response)


def _iterator_item(annotation: Any) -> Any:
    """``X`` of ``AsyncIterator[X]``/``Iterator[X]`` (and generators), else None."""
    origin = typing.get_origin(annotation)
    if origin in (collections.abc.AsyncIterator, collections.abc.AsyncIterable,
                  collections.abc.AsyncGenerator, collections.abc.Iterator,
                  collections.abc.Iterable, collections.abc.Generator):
        return typing.get_args(annotation)[0]
    return None


@dataclass(frozen=True)
class _Call:
    """How an openfal input becomes the SDK method's arguments."""

    model: type[BaseModel] | None
    spread: bool  # the model was made from plain parameters: pass its fields one by one
    argument: str | None
    injected: dict[str, type]

    def arguments(self, payload: BaseModel | None, response: Response) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if payload is not None and self.spread:
            kwargs.update({name: getattr(payload, name) for name in type(payload).model_fields})
        elif payload is not None and self.argument is not None:
            kwargs[self.argument] = payload
        for name, kind in self.injected.items():
            kwargs[name] = response if issubclass(kind, Response) else _request_now()
        return kwargs


def _call_of(fn: Callable) -> _Call:
    hints = _hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    injected = {p.name: hints[p.name] for p in params if _is_injected(hints.get(p.name))}
    plain = [p for p in params if p.name not in injected]
    if not plain:
        return _Call(None, False, None, injected)
    annotation = hints.get(plain[0].name)
    if len(plain) == 1 and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _Call(annotation, False, plain[0].name, injected)
    fields = {p.name: (hints.get(p.name, Any),
                       ... if p.default is inspect.Parameter.empty else p.default)
              for p in plain}
    model = create_model(f"{_camel(fn.__name__)}Input", __module__=fn.__module__, **fields)
    return _Call(model, True, None, injected)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def as_openfal_endpoint(fn: Callable) -> Callable:
    """``fn`` as an openfal endpoint: ``(self, input: Model) -> result``, sync or async as
    ``fn`` is."""
    call = _call_of(fn)
    output = _hints(fn).get("return")
    streamed_item = _iterator_item(output)
    if streamed_item is not None or (isinstance(output, type) and issubclass(output, Response)):
        output = streamed_item  # the JSON schema says nothing of a raw response's body

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        async def endpoint_async(self: App, *payload: BaseModel) -> Any:
            response = Response()
            result = fn(self, **call.arguments(payload[0] if payload else None, response))
            if inspect.isawaitable(result):
                result = await result
            if _is_stream(result):
                return await _stream_result(result, response)
            return _plain_result(result, response)

        wrapper: Callable = endpoint_async
    else:
        def endpoint_sync(self: App, *payload: BaseModel) -> Any:
            response = Response()
            result = fn(self, **call.arguments(payload[0] if payload else None, response))
            if _is_stream(result):
                # Relayed on an event loop of this worker thread's own (a
                # StreamingResponse's body is an async iterator whatever its content).
                return asyncio.run(_stream_result(result, response))
            return _plain_result(result, response)

        wrapper = endpoint_sync
    functools.update_wrapper(wrapper, fn)
    del wrapper.__wrapped__  # type: ignore[attr-defined]  # its signature is the one below
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if call.model is not None:
        parameters.append(inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            annotation=call.model))
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**({"input": call.model} if call.model else {}),
                               "return": output if output is not None else Any}
    return wrapper


def _request_now() -> Request:
    """A ``starlette`` Request carrying the current request's headers and path."""
    ctx = context.current_request()
    headers = [(name.lower().encode(), value.encode())
               for name, value in (ctx.headers.items() if ctx else ())]
    return Request({"type": "http", "method": "POST", "path": ctx.endpoint if ctx else "/",
                    "headers": headers, "query_string": b""})


def _bill(response: Response) -> None:
    units = response.headers.get("x-fal-billable-units")
    ctx = context.current_request()
    if units is not None and ctx is not None:
        try:
            ctx.billable_units = float(units)
        except ValueError:
            raise AppException(f"x-fal-billable-units is not a number: {units!r}",
                               500) from None


def _is_stream(result: Any) -> bool:
    return (isinstance(result, StreamingResponse) or inspect.isasyncgen(result)
            or inspect.isgenerator(result))


def _plain_result(result: Any, response: Response) -> Any:
    """The result as openfal returns it (a ``Response`` as its JSON body)."""
    _bill(response)
    if isinstance(result, Response):
        _bill(result)
        return _response_body(result)
    return result


async def _stream_result(result: Any, response: Response) -> Any:
    """Streamed items sent as partial results but the last, which is the result."""
    _bill(response)
    if isinstance(result, StreamingResponse):
        _bill(result)
        if not (result.media_type or "").startswith("text/event-stream"):
            raise AppException("openfal streams server-sent events only: a StreamingResponse "
                               f"of {result.media_type!r} cannot be relayed", 500)
        return await _relay(_sse_data(result.body_iterator))
    return await _relay(result if inspect.isasyncgen(result) else _async(result))


def _response_body(response: Response) -> Any:
    try:
        return pydantic_core.from_json(response.body)
    except ValueError:
        raise AppException("openfal relays JSON responses only: the endpoint's Response "
                           "body is not JSON", 500) from None


async def _relay(items: AsyncIterator[Any]) -> Any:
    """Send every item but the last as a partial result; the last is the result (as the
    official clients take a stream's last event)."""
    last: Any = None
    started = False
    async for item in items:
        if started:
            context.partial(last)
        last, started = item, True
    return last


async def _async(items: Iterator[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _sse_data(chunks: AsyncIterator[str | bytes | memoryview]) -> AsyncIterator[Any]:
    """The data of each server-sent event in ``chunks``, parsed as JSON where it is."""
    pending = ""
    async for chunk in chunks:
        pending += chunk if isinstance(chunk, str) else bytes(chunk).decode()
        pending = pending.replace("\r\n", "\n")
        *events, pending = pending.split("\n\n")
        for event in events:
            if (data := _event_data(event)) is not None:
                yield data
    if (data := _event_data(pending)) is not None:
        yield data


def _event_data(event: str) -> Any:
    lines = [line[5:].removeprefix(" ") for line in event.split("\n")
             if line.startswith("data:")]
    if not lines:
        return None
    text = "\n".join(lines)
    try:
        return json.loads(text)
    except ValueError:
        return text
