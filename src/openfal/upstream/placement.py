"""Where an endpoint runs: on this machine, at an upstream, or nowhere yet.

Catalog endpoints that openfal cannot run itself (closed models) are *routed only*: with an
upstream whose patterns match they are forwarded there, without one they are refused at
once (503 ``upstream_not_configured``, no request created). A local endpoint runs here; if
its weights turn out to be missing and an upstream matches, its runner forwards instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from openfal.app.app import App

if TYPE_CHECKING:
    from openfal.server import Platform

CONFIG_HINT = ("add an [[upstream]] entry whose endpoints match it to a config file and "
               "start the server with it: openfal serve --config openfal.toml")


def is_routed_only(app: type[App]) -> bool:
    return bool(getattr(app, "routed_only", False))


def where_it_runs(platform: Platform, endpoint_id: str) -> dict[str, Any]:
    """``{"kind": "local" | "upstream" | "unavailable", ...}`` for a served endpoint."""
    found = platform.registry.resolve(endpoint_id)
    upstream = platform.settings.upstreams.for_endpoint(endpoint_id)
    if found is None:
        return {"kind": "unavailable", "reason": "not_served"}
    if is_routed_only(found[0].cls):
        if upstream is None:
            return {"kind": "unavailable", "reason": "upstream_not_configured"}
        return {"kind": "upstream", "upstream": upstream.name}
    return {"kind": "local", "fallback_upstream": upstream.name if upstream else None}
