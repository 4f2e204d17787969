"""Host-name routing: the official clients pick an API by host name; one listener serves all.

``queue.fal.run`` requests are the queue API at the root, so they are mapped onto the
``/queue`` path prefix the rest of the gateway uses; ``fal.run``, ``rest.fal.ai`` and
``v3.fal.media`` paths already match the gateway's own. The prefix a caller's queue URLs
need is recorded in the scope, so the URLs handed back work for the caller that asked.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

QUEUE_HOSTS = frozenset({"queue.fal.run", "queue.falrun.com"})
RUN_HOSTS = frozenset({"fal.run", "falrun.com"})
REST_HOSTS = frozenset({"rest.fal.ai", "rest.alpha.fal.ai"})
CDN_HOSTS = frozenset({"v3.fal.media", "v3b.fal.media", "fal.media"})
PLATFORM_HOSTS = QUEUE_HOSTS | RUN_HOSTS | REST_HOSTS | CDN_HOSTS

QUEUE_PREFIX = "/queue"
QUEUE_PREFIX_KEY = "openfal.queue_prefix"


def host_name(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1").lower()
            return host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return ""


def queue_prefix(scope: Scope) -> str:
    """The path prefix of the queue API for this caller: none on the queue host."""
    return scope.get(QUEUE_PREFIX_KEY, QUEUE_PREFIX)


class HostRouting:
    """ASGI middleware mapping the queue host's paths onto ``/queue``."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and host_name(scope) in QUEUE_HOSTS:
            scope = dict(scope)
            scope["path"] = QUEUE_PREFIX + scope["path"]
            scope["raw_path"] = QUEUE_PREFIX.encode() + scope.get("raw_path", b"")
            scope[QUEUE_PREFIX_KEY] = ""
        await self.app(scope, receive, send)
