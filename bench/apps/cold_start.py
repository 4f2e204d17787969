"""The echo and tiny-FLUX apps with a short ``keep_alive``, so that bench/bench_cold_start.py
gets a second cold start (the first runner stops when idle) without restarting the server."""

from __future__ import annotations

from openfal.models.echo import Echo
from openfal.models.flux import OpenfalFlux

KEEP_ALIVE = 0.5


class ColdEcho(Echo):
    app_name = "cold-echo"
    keep_alive = KEEP_ALIVE


class ColdFlux(OpenfalFlux):
    app_name = "cold-flux"
    keep_alive = KEEP_ALIVE
