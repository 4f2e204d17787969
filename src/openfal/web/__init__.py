"""The web playground: pages served by ``openfal serve`` at ``/`` (``playground.py``), built
from plain ES modules and a stylesheet under ``static/``, shipped in the package."""
