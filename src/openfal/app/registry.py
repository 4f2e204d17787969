"""The apps a server serves, and how an endpoint id maps to an app and its sub-path."""

from __future__ import annotations

from dataclasses import dataclass

from openfal.app.app import App, EndpointSpec
from openfal.app.loader import load_app
from openfal.errors import ConfigError

# First path segments that are platform routes, so no owner may use them.
RESERVED_OWNERS = frozenset({"tokens", "queue", "api", "health", "openapi", "storage", "files"})


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
    def __init__(self, owner: str = "openfal"):
        self.owner = owner
        self.apps: dict[str, ServedApp] = {}

    def add(self, ref: str) -> ServedApp:
        cls = load_app(ref)
        owner = getattr(cls, "app_owner", None) or self.owner
        app_id = f"{owner}/{cls.app_name}"
        if owner in RESERVED_OWNERS:
            raise ConfigError(f"{ref}: owner {owner!r} is reserved for the platform's routes")
        served_already = self.apps.get(app_id)
        if served_already is not None:
            raise ConfigError(f"{ref}: app id {app_id!r} is already served by "
                              f"{served_already.ref}; give one of them another app_name")
        served = ServedApp(app_id=app_id, ref=ref, cls=cls)
        self.apps[app_id] = served
        return served

    def resolve(self, endpoint_id: str) -> tuple[ServedApp, EndpointSpec] | None:
        """The app and endpoint an id like ``owner/app[/sub/path]`` names, if served."""
        parts = endpoint_id.strip("/").split("/")
        if len(parts) < 2:
            return None
        served = self.apps.get(f"{parts[0]}/{parts[1]}")
        if served is None:
            return None
        spec = served.cls.endpoints().get("/" + "/".join(parts[2:]))
        return (served, spec) if spec else None
