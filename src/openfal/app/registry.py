"""The apps a server serves, and how an endpoint id maps to an app and its sub-path."""

from __future__ import annotations

from dataclasses import dataclass

from openfal.app.app import App, EndpointSpec
from openfal.app.loader import load_app
from openfal.errors import ConfigError

# First path segments that are platform routes, so no owner may use them.
RESERVED_OWNERS = frozenset({"tokens", "queue", "api", "health", "openapi", "storage", "files",
                             "v1"})


@dataclass(frozen=True)
class ServedApp:
    app_id: str  # "owner/name"
    ref: str  # how a runner imports it: "file.py::Class" or "module::Class"
    cls: type[App]

    def endpoint_id(self, path: str) -> str:
        return self.app_id if path == "/" else self.app_id + path

    def endpoint_ids(self) -> list[str]:
        return [self.endpoint_id(path) for path in self.cls.endpoints()]


class Registry:
    """Apps by their reference, and every endpoint id by what serves it. Several classes may
    share an app id (``owner/name``) as long as their endpoint paths differ."""

    def __init__(self, owner: str = "openfal"):
        self.owner = owner
        self.apps: dict[str, ServedApp] = {}  # by ref
        self._endpoints: dict[str, tuple[ServedApp, EndpointSpec]] = {}

    def add(self, ref: str) -> ServedApp:
        cls = load_app(ref)
        owner = getattr(cls, "app_owner", None) or self.owner
        app_id = f"{owner}/{cls.app_name}"
        if owner in RESERVED_OWNERS:
            raise ConfigError(f"{ref}: owner {owner!r} is reserved for the platform's routes")
        if ref in self.apps:
            raise ConfigError(f"{ref} is named twice")
        served = ServedApp(app_id=app_id, ref=ref, cls=cls)
        for path, spec in cls.endpoints().items():
            endpoint_id = served.endpoint_id(path)
            taken = self._endpoints.get(endpoint_id)
            if taken is not None:
                raise ConfigError(f"{ref}: endpoint {endpoint_id!r} is already served by "
                                  f"{taken[0].ref}; give one of them another app_name")
            self._endpoints[endpoint_id] = (served, spec)
        self.apps[ref] = served
        return served

    def resolve(self, endpoint_id: str) -> tuple[ServedApp, EndpointSpec] | None:
        """The app and endpoint an id like ``owner/app[/sub/path]`` names, if served."""
        return self._endpoints.get(endpoint_id.strip("/"))

    def endpoint_ids(self) -> list[str]:
        return sorted(self._endpoints)
