"""Apps with requirements of their own (tests/test_app_environments.py). The server running
them has no slugify; it has pydantic and torch."""

from __future__ import annotations

import sys

from pydantic import BaseModel

import openfal


class Text(BaseModel):
    text: str = "Hello World"


class Where(BaseModel):
    python: str  # the runner's interpreter
    slug: str | None = None
    module: str | None = None  # where slugify was imported from


class Slugify(openfal.App):
    app_name = "env-slugify"
    requirements = ["python-slugify==8.0.4"]

    @openfal.endpoint("/")
    def run(self, input: Text) -> Where:
        import slugify  # installed for this app: the server lacks it

        return Where(python=sys.executable, slug=slugify.slugify(input.text),
                     module=slugify.__file__)


class SlugifyToo(Slugify):
    """Another app with the same requirements (spelt otherwise)."""

    app_name = "env-slugify-too"
    requirements = ["Python_Slugify == 8.0.4"]


class Satisfied(openfal.App):
    """Asks only for what the server has."""

    app_name = "env-satisfied"
    requirements = ["pydantic>=2", "torch"]

    @openfal.endpoint("/")
    def run(self) -> Where:
        return Where(python=sys.executable)


class Unavailable(openfal.App):
    """Asks for a package that does not exist."""

    app_name = "env-unavailable"
    requirements = ["openfal-no-such-package-xyz==1.0"]

    @openfal.endpoint("/")
    def run(self) -> Where:
        return Where(python=sys.executable)
