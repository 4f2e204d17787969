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

NOT_CONFIGURED = "upstream_not_configured"


def not_configured(endpoint_id: str) -> str:
    """Why a routed endpoint cannot run, and the config that would let it."""
    return (f"{endpoint_id} runs at an upstream provider and none is configured for it: add "
            "an [[upstream]] entry whose endpoints match it to a config file and start the "
            "server with it: openfal serve --config openfal.toml")


def is_routed_only(app: type[App]) -> bool:
    return bool(getattr(app, "routed_only", False))


def where_it_runs(platform: Platform, app: type[App], endpoint_id: str) -> dict[str, Any]:
    """``{"kind": "local" | "upstream" | "unavailable", ...}`` for an endpoint of ``app``."""
    upstream = platform.settings.upstreams.for_endpoint(endpoint_id)
    if is_routed_only(app):
        if upstream is None:
            return {"kind": "unavailable", "reason": NOT_CONFIGURED}
        return {"kind": "upstream", "upstream": upstream.name}
    return {"kind": "local", "fallback_upstream": upstream.name if upstream else None}
