"""A library that announces itself when imported, through a handler of its own bound to the
``sys.stderr`` of that moment, as transformers does (and through ``warnings`` and print)."""

from __future__ import annotations

import logging
import sys
import warnings

NAME = "noisy_lib"

log = logging.getLogger(NAME)
log.addHandler(logging.StreamHandler(sys.stderr))
log.propagate = False
log.warning("noisy_lib: logged at import")
warnings.warn("noisy_lib: warned at import", stacklevel=1)
print("noisy_lib: printed at import")
