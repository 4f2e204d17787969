"""``openfal.App``: what a user subclasses to serve a model.

An app is a class. Its attributes configure how the platform runs it (mirroring the hosted
platform's names); ``setup()`` runs once per runner process; methods marked with
:func:`endpoint` serve requests. The class is imported by the gateway only to read its
configuration and schemas; the runner process is the only place it is instantiated.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from openfal.app.batching import Batch
from openfal.app.context import RequestContext, current_request

_ENDPOINT_MARK = "__openfal_endpoint__"
_BATCH_MARK = "__openfal_batch__"
_REALTIME_MARK = "__openfal_realtime__"
_PATH_RE = re.compile(r"^/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$")
# Sub-paths that would collide with the queue's by-id URLs. ("/stream" is allowed: a POST to
# an endpoint whose path ends in /stream streams, as the catalog's flux-krea-lora/stream does.)
_RESERVED_PATHS = {"/requests"}


@dataclass(frozen=True)
class RealtimeConfig:
    """A realtime endpoint's session settings: a session with no input for
    ``session_timeout`` seconds is closed cleanly."""

    session_timeout: float = 60.0


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint of an app: where it lives and what it takes and returns."""

    path: str
    method_name: str
    input_model: type[BaseModel] | None
    output_model: Any
    is_async: bool
    # Set for endpoints also served over a websocket (``@openfal.realtime``).
    realtime: RealtimeConfig | None = None
    # Set for endpoints that serve several requests in one call (app/batching.py); the
    # models above are then those of one request.
    batch: Batch | None = None


def endpoint(path: str = "/", *, batch: Batch | None = None) -> Callable[[Callable], Callable]:
    """Mark an App method as the endpoint served at ``path`` (``"/"`` is the app's root).
    With ``batch``, the method takes a list of inputs and returns a list of outputs (see
    :mod:`openfal.app.batching`)."""
    if not _PATH_RE.match(path) or path in _RESERVED_PATHS:
        raise ValueError(f"invalid endpoint path {path!r}: use '/' or '/name[/name...]'")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _ENDPOINT_MARK, path)
        setattr(fn, _BATCH_MARK, batch)
        return fn

    return mark


def realtime(path: str = "/realtime", *, session_timeout: float = 60.0
             ) -> Callable[[Callable], Callable]:
    """Mark an App method as a realtime endpoint: a websocket at ``path`` where each
    msgpack message is one input and each answer one output (``openfal.partial`` calls
    send extra messages before it). It is also served over HTTP like any endpoint."""
    as_endpoint = endpoint(path)

    def mark(fn: Callable) -> Callable:
        setattr(fn, _REALTIME_MARK, RealtimeConfig(session_timeout=session_timeout))
        return as_endpoint(fn)

    return mark


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _endpoint_spec(path: str, fn: Callable) -> EndpointSpec:
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    batch: Batch | None = getattr(fn, _BATCH_MARK, None)
    if len(params) > 1 or (batch is not None and not params):
        raise TypeError(f"endpoint {fn.__qualname__} must take one pydantic model argument"
                        + (" (a list of them: it batches)" if batch else ""))
    input_model = hints.get(params[0].name) if params else None
    output_model = hints.get("return")
    if batch is not None:
        input_model = _list_item(input_model, fn, "argument")
        output_model = _list_item(output_model, fn, "return type")
    if params and not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
        raise TypeError(f"endpoint {fn.__qualname__}: its argument must be a pydantic model")
    return EndpointSpec(
        path=path,
        method_name=fn.__name__,
        input_model=input_model,
        output_model=output_model,
        is_async=inspect.iscoroutinefunction(fn),
        realtime=getattr(fn, _REALTIME_MARK, None),
        batch=batch,
    )


def _list_item(annotation: Any, fn: Callable, what: str) -> Any:
    """``X`` of a batched endpoint's ``list[X]``."""
    if typing.get_origin(annotation) is not list:
        raise TypeError(f"batched endpoint {fn.__qualname__}: its {what} must be list[...]")
    return typing.get_args(annotation)[0]


class App:
    """Base class for apps. Configure with class attributes or class keyword arguments::

        class Echo(openfal.App, keep_alive=300):
            max_multiplexing = 4
    """

    app_name: ClassVar[str] = ""
    _app_name_explicit: ClassVar[bool] = False
    # Owner part of the endpoint id; empty means the server's default owner.
    app_owner: ClassVar[str] = ""
    machine_type: ClassVar[str | list[str]] = "S"
    num_gpus: ClassVar[int] = 0
    requirements: ClassVar[list[str]] = []
    # Modules beside the app file and other files (paths relative to it) that `openfal
    # deploy` uploads with it.
    local_python_modules: ClassVar[list[str]] = []
    app_files: ClassVar[list[str]] = []
    # The app secrets (`openfal secrets`) its runners get as environment variables; None:
    # every one, as on the hosted platform.
    secrets: ClassVar[list[str] | None] = None
    keep_alive: ClassVar[float] = 60
    min_concurrency: ClassVar[int] = 0
    max_concurrency: ClassVar[int] = 1
    max_multiplexing: ClassVar[int] = 1
    request_timeout: ClassVar[float] = 3600
    startup_timeout: ClassVar[float] = 600
    # Seconds a cancelled in-progress request has to stop on its own before its runner is
    # stopped for it.
    cancel_grace_period: ClassVar[float] = 5
    app_auth: ClassVar[str] = "private"
    # Modules its runners import that take long to (torch, diffusers, ...): a worker's
    # runner template imports them once and forks runners from it (worker/templates.py).
    runtime_modules: ClassVar[tuple[str, ...]] = ()
    # Whether the runner fetches an input's files (File fields, *_url strings) before the
    # endpoint runs (see app/inputs.py); SDK apps fetch what they read themselves.
    prefetch_inputs: ClassVar[bool] = True

    _endpoints: ClassVar[dict[str, EndpointSpec]] = {}

    def __init_subclass__(cls, **config: Any) -> None:
        super().__init_subclass__()
        for key, value in config.items():
            if not hasattr(App, key) or key.startswith("_"):
                raise TypeError(f"unknown App option {key!r}")
            setattr(cls, key, value)
        if "app_name" in cls.__dict__ or "app_name" in config:
            cls._app_name_explicit = True
        elif not cls._app_name_explicit:
            # A name derived from the class name is the class's own; a name a parent set
            # explicitly is inherited (a base class naming the app for its variants).
            cls.app_name = _kebab(cls.__name__)
        cls._endpoints = cls._collect_endpoints()
        cls._check_config()

    @classmethod
    def _collect_endpoints(cls) -> dict[str, EndpointSpec]:
        found: dict[str, EndpointSpec] = {}
        for name in dir(cls):
            fn = getattr(cls, name, None)
            path = getattr(fn, _ENDPOINT_MARK, None)
            if path is None:
                continue
            if path in found:
                raise TypeError(f"{cls.__name__}: two endpoints at {path!r}")
            found[path] = _endpoint_spec(path, fn)
        return dict(sorted(found.items()))

    @classmethod
    def _check_config(cls) -> None:
        if cls.max_multiplexing < 1 or cls.max_concurrency < 1:
            raise ValueError(f"{cls.__name__}: max_multiplexing and max_concurrency must be >= 1")
        if not 0 <= cls.min_concurrency <= cls.max_concurrency:
            raise ValueError(f"{cls.__name__}: min_concurrency must be in [0, max_concurrency]")
        if cls.num_gpus < 0:
            raise ValueError(f"{cls.__name__}: num_gpus must be >= 0")
        from packaging.requirements import InvalidRequirement, Requirement
        if isinstance(cls.requirements, str):
            raise ValueError(f"{cls.__name__}: requirements must be a list of pip specs")
        for step in cls.requirements:  # pip specs, or install steps: lists of them
            for requirement in [step] if isinstance(step, str) else step:
                try:
                    Requirement(requirement)
                except InvalidRequirement as exc:
                    reason = str(exc).splitlines()[0]  # the rest points at the character
                    raise ValueError(f"{cls.__name__}: invalid requirement {requirement!r}: "
                                     f"{reason}") from None
        for spec in cls._endpoints.values():
            if spec.batch is not None and spec.batch.max_size > cls.max_multiplexing:
                raise ValueError(
                    f"{cls.__name__}: endpoint {spec.path} batches up to "
                    f"{spec.batch.max_size} requests, so max_multiplexing (a runner's "
                    f"requests at once) must be at least that, not {cls.max_multiplexing}")

    @classmethod
    def endpoints(cls) -> dict[str, EndpointSpec]:
        return cls._endpoints

    @classmethod
    def gpu_count(cls) -> int:
        """GPUs each runner gets on a worker that manages them (``--gpus``): ``num_gpus``
        when the app sets it, else 1 on a GPU ``machine_type`` (the hosted platform's GPU
        machines are named ``GPU...``: ``GPU-A100``, ``GPU-H100``), else 0."""
        setter = next(klass for klass in cls.__mro__ if "num_gpus" in vars(klass))
        if setter is not App:
            return cls.num_gpus
        machine_types = ([cls.machine_type] if isinstance(cls.machine_type, str)
                         else cls.machine_type)
        return int(any(name.upper().startswith("GPU") for name in machine_types))

    # Lifecycle hooks, overridden by apps.
    def setup(self) -> Any:
        """Load the model. Runs once per runner, before the runner takes requests."""

    def teardown(self) -> Any:
        """Release resources. Runs once when the runner stops cleanly."""

    def provide_hints(self) -> list[str]:
        """Routing hints: requests whose ``X-Fal-Runner-Hint`` matches prefer this runner."""
        return []

    @property
    def current_request(self) -> RequestContext | None:
        return current_request()
