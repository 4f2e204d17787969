"""openfal's compatibility layer for apps written with the hosted platform's Python SDK.

An app file that imports ``fal`` (``import fal``, ``from fal.toolkit import Image``, ...) is
served unchanged: while it is imported, and in its runner for good, the name ``fal`` and its
submodules resolve to :mod:`openfal.compat.fal`, which implements the SDK's documented app
surface on top of openfal's own framework (``fal.App`` is an ``openfal.App``). The rest of
the process never sees it: the gateway imports such a file inside :func:`sdk_imports` and
takes the ``fal`` modules out of ``sys.modules`` again afterwards, and only the runner of an
SDK app installs it for good (:func:`install_sdk`), shadowing the real ``fal`` package if
that environment has one. docs/sdk-compat.md lists what is supported and what is refused.
"""

from openfal.compat.imports import (
    SdkFeatureUnsupported,
    install_sdk,
    is_sdk_app,
    sdk_imports,
    uses_sdk,
)

__all__ = ["SdkFeatureUnsupported", "install_sdk", "is_sdk_app", "sdk_imports", "uses_sdk"]
