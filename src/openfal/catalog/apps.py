"""openfal apps serving the catalog endpoints, one class per app id.

``fal-ai/luma-dream-machine`` is the class ``FalAi_LumaDreamMachine`` with the endpoints
``/``, ``/image-to-video``, ``/ray-2``, ...; a runner imports it as
``openfal.catalog.apps::FalAi_LumaDreamMachine`` (``CATALOG_APP_REFS`` lists them all). Each
endpoint validates its input with the page's schema and hands it to
``openfal.upstream.router.forward``. They are all ``routed_only``: without an upstream
configured for them the gateway refuses their calls. The open-weight endpoints that run on
this machine (``LOCAL_IDS``) are served by their local apps in ``openfal.models`` instead.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import BaseModel

from openfal.app.app import App, endpoint
from openfal.catalog import ENDPOINTS, OPEN_WEIGHTS, CatalogEndpoint

# The work happens upstream: a runner only waits on the network, but its HTTP client costs
# a few ms of CPU per request (docs/benchmarks.md), so busy apps get more runners.
MAX_MULTIPLEXING = 64
MAX_CONCURRENCY = 4
KEEP_ALIVE = 300.0
TRAINING_TIMEOUT = 6 * 3600.0
# Served by local apps (openfal.models.flux_kontext, flux_krea, hidream, kandinsky,
# wan_trainer), not forwarded: every open-weight endpoint.
LOCAL_IDS = OPEN_WEIGHTS


def _pascal(text: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z0-9]+", text)
                   if word)


def _method_name(path: str) -> str:
    """``/v2.1/master/text-to-video`` -> ``run_v2_1_master_text_to_video``."""
    return "_".join(["run", *re.findall(r"[A-Za-z0-9]+", path)])


def _forwarding_endpoint(entry: CatalogEndpoint, path: str
                         ) -> Callable[..., Coroutine[Any, Any, Any]]:
    endpoint_id = entry.id

    async def handler(self: App, input: BaseModel) -> Any:
        from openfal.upstream.router import forward

        return await forward(self.current_request, endpoint_id, input)

    # The framework reads the schemas from the annotations.
    handler.__annotations__ = {"input": entry.input_model, "return": entry.output_model}
    handler.__name__ = handler.__qualname__ = _method_name(path)
    return endpoint(path)(handler)


def _app_class(app_id: str, entries: list[CatalogEndpoint]) -> type[App]:
    owner, name = app_id.split("/")
    class_name = f"{_pascal(owner)}_{_pascal(name)}"
    namespace: dict[str, Any] = {
        "__module__": __name__, "__qualname__": class_name,
        "__doc__": f"The {app_id} endpoints of the model pages.",
        "app_owner": owner, "app_name": name,
        "max_multiplexing": MAX_MULTIPLEXING, "max_concurrency": MAX_CONCURRENCY,
        "keep_alive": KEEP_ALIVE,
        "routed_only": True,
    }
    if any(entry.category == "training" for entry in entries):
        namespace["request_timeout"] = TRAINING_TIMEOUT
    for entry in entries:
        path = entry.id.removeprefix(app_id) or "/"
        handler = _forwarding_endpoint(entry, path)
        namespace[handler.__name__] = handler
    return type(class_name, (App,), namespace)


def _catalog_apps() -> dict[str, type[App]]:
    by_app: dict[str, list[CatalogEndpoint]] = defaultdict(list)
    for entry in ENDPOINTS.values():
        if entry.id in LOCAL_IDS:
            continue
        by_app["/".join(entry.id.split("/")[:2])].append(entry)
    classes = [_app_class(app_id, entries) for app_id, entries in sorted(by_app.items())]
    return {cls.__name__: cls for cls in classes}


CATALOG_APPS = _catalog_apps()
globals().update(CATALOG_APPS)
CATALOG_APP_REFS: list[str] = [f"{__name__}::{name}" for name in CATALOG_APPS]
