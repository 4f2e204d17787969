"""Host names: which ones the proxy keeps here, and how to reach a bound address."""

from __future__ import annotations

from openfal.gateway.hosts import PLATFORM_HOSTS


def is_platform_host(host: str) -> bool:
    """Whether ``host`` (any case, with or without the root's trailing dot) is ours."""
    return host.lower().rstrip(".") in PLATFORM_HOSTS


def reachable_host(host: str) -> str:
    """How this machine reaches a listener bound to ``host``: an any-address is loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
