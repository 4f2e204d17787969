"""Errors that stop the platform from starting, told to the operator in one line."""

from __future__ import annotations


class ConfigError(Exception):
    """A problem in how the server was started (a port in use, a data dir another server
    holds, an app that cannot be loaded): the CLI prints the message alone and exits 1."""
