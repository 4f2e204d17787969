"""``fal``: the hosted platform's Python SDK, as far as apps use it, served by openfal.

Apps import it as ``fal`` (see :mod:`openfal.compat`); nothing here is meant to be imported
under this package's own name except by openfal.
"""

from __future__ import annotations

from typing import Any

from openfal.compat.fal import exceptions, toolkit
from openfal.compat.fal.app import App, RequestContext, endpoint, realtime
from openfal.compat.imports import SdkFeatureUnsupported

__version__ = "1.83.0"  # the SDK release whose app surface this follows
version_tuple = (1, 83, 0)


BillingComponents = dict[str, Any]  # {"version": 1, "schema_id": ..., "app": JSON Schema}


class BillingDeclaration:
    """What ``@fal.endpoint(billing=...)`` takes: anything with a ``declaration()``."""

    def declaration(self) -> dict[str, Any]:
        raise NotImplementedError


def _refused(name: str, why: str) -> Any:
    class Refused:
        def __init__(self, *_args: Any, **_kwargs: Any):
            raise SdkFeatureUnsupported(f"fal.{name} is not supported by openfal: {why}")

        def __call__(self, *_args: Any, **_kwargs: Any) -> Any:
            raise SdkFeatureUnsupported(f"fal.{name} is not supported by openfal: {why}")

    Refused.__name__ = name
    return Refused


HealthCheck = _refused("HealthCheck", "runner health checks")
ContainerImage = _refused("ContainerImage", "openfal runs apps in Python environments")
function = isolated = cached = _refused("function", "only fal.App classes are served")
sync_dir = _refused("sync_dir", "there is no shared /data volume to sync")

__all__ = ["App", "BillingComponents", "BillingDeclaration", "ContainerImage", "HealthCheck",
           "RequestContext", "SdkFeatureUnsupported", "__version__", "cached", "endpoint",
           "exceptions", "function", "isolated", "realtime", "sync_dir", "toolkit",
           "version_tuple"]
