"""Rich output for every command: at the terminal's width on a terminal, and when piped or
redirected, as wide as the text is (rich would otherwise cut tables at 80 columns, or at
``COLUMNS``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Column, Table

UNLIMITED = 1_000_000


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = UNLIMITED
    return console


stdout = make_console()
stderr = make_console(stderr=True)


def table(*headers: str) -> Table:
    """A table whose cells wrap, rather than lose text, where the terminal is too narrow."""
    return Table(*(Column(header, overflow="fold") for header in headers))
