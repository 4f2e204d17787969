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
    revision: int | None = None  # of a deployed app (``openfal deploy``); None: --app

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

    def add(self, ref: str, app_id: str | None = None, revision: int | None = None
            ) -> ServedApp:
        """Serve the app ``ref`` names, as ``app_id`` (default: owner/app_name)."""
        served = self.load(ref, app_id, revision)
        if taken := self.taken_by(served):
            raise ConfigError(f"{ref}: endpoint {taken[0]!r} is already served by "
                              f"{taken[1].ref}; give one of them another app_name")
        return self.add_loaded(served)

    def load(self, ref: str, app_id: str | None = None, revision: int | None = None
             ) -> ServedApp:
        """The app ``ref`` names, not served yet (see :meth:`taken_by`)."""
        cls = load_app(ref)
        app_id = app_id or f"{getattr(cls, 'app_owner', None) or self.owner}/{cls.app_name}"
        owner = app_id.split("/", 1)[0]
        if owner in RESERVED_OWNERS:
            raise ConfigError(f"{ref}: owner {owner!r} is reserved for the platform's routes")
        if ref in self.apps:
            raise ConfigError(f"{ref} is named twice")
        return ServedApp(app_id=app_id, ref=ref, cls=cls, revision=revision)

    def taken_by(self, served: ServedApp) -> tuple[str, ServedApp] | None:
        """An endpoint of ``served`` that another app serves already, and that app."""
        for endpoint_id in served.endpoint_ids():
            taken = self._endpoints.get(endpoint_id)
            if taken is not None and taken[0].ref != served.ref:
                return endpoint_id, taken[0]
        return None

    def add_loaded(self, served: ServedApp) -> ServedApp:
        for path, spec in served.cls.endpoints().items():
            self._endpoints[served.endpoint_id(path)] = (served, spec)
        self.apps[served.ref] = served
        return served

    def remove(self, ref: str) -> ServedApp | None:
        """Stop serving the app ``ref`` names (requests it has started go on running)."""
        served = self.apps.pop(ref, None)
        if served is not None:
            for endpoint_id in served.endpoint_ids():
                if self._endpoints.get(endpoint_id, (None,))[0] is served:
                    del self._endpoints[endpoint_id]
        return served

    def resolve(self, endpoint_id: str) -> tuple[ServedApp, EndpointSpec] | None:
        """The app and endpoint an id like ``owner/app[/sub/path]`` names, if served."""
        return self._endpoints.get(endpoint_id.strip("/"))

    def endpoint_ids(self) -> list[str]:
        return sorted(self._endpoints)
