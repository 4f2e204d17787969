"""Per-app Python environments: an app's ``requirements``, installed with uv over the
server's own packages.

An app that lists nothing the server lacks gets no environment: its runners start as any
other. Otherwise its runners run the python of a virtual environment built for its
requirements, layered over the server's packages. How (checked against uv 0.13):

- ``uv venv`` makes the environment from the server's interpreter (from its base
  interpreter, when the server runs in a venv: ``--system-site-packages`` would show the
  base interpreter's packages, not the server venv's, so it is not used).
- uv counts as installed only what lies in the target environment's own site-packages: not
  what a ``.pth`` file adds, nor a base interpreter's. So before installing, the new
  environment gets a *view* of the server's packages: a ``.dist-info`` folder per
  distribution the server can import, holding its metadata and a RECORD naming only those
  files. uv then keeps every requirement the server satisfies (``torch`` is never
  downloaded: the server's ``2.13.0+cpu`` satisfies it) and what they depend on; where it
  replaces one (the app asks for another version), uninstalling removes only the view's
  folder. After the install the view's other folders are removed.
- Each install step is tried first with the server's versions as constraints, so a new
  package resolves to a release compatible with what the server has (``torchvision`` to
  the one matching the server's torch, not the newest, which would bring a newer torch);
  only when that has no solution is it tried without them (the app's versions then win).
- A ``.pth`` file adds the server's site-packages directories, as site directories (their
  own ``.pth`` files apply: an editable openfal is found), after the environment's own:
  runners see the app's packages first, then everything of the server's, openfal included.

Environments live under the cache dir (``<data-dir>/environments`` by default), one per
key: a hash of the requirements (normalised, steps in order) and of the server's python
and installed versions (an environment is layered over exactly those). They are built
under an exclusive lock on ``<key>.lock`` (two runners, two workers on one disk) and marked
complete last: a folder without the marker (a build killed midway) is built again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import itertools
import json
import logging
import os
import re
import shutil
import site
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import uv
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

# What an App's ``requirements`` may be: pip specs, or install steps (lists of them).
Requirements = Sequence[str] | Sequence[Sequence[str]]

COMPLETE_MARKER = "openfal-environment.json"  # written last: the environment is usable
VIEW_MARKER = "OPENFAL_SERVER_VIEW"  # in a view's .dist-info: the server's, not installed here
SERVER_PATH_FILE = "_openfal_server.pth"
CONSTRAINTS_FILE = "server-constraints.txt"
LOCK_POLL_SECONDS = 0.2
_UV_PREFIX = re.compile(r"^\s*(error|cause|caused by):\s*", re.IGNORECASE)


class EnvironmentBuildFailed(Exception):
    """An app's requirements could not be installed; the message says which, and why."""


@dataclass(frozen=True)
class RunnerEnvironment:
    """What a runner of an app with its own environment is started with."""

    python: str
    variables: dict[str, str]


def requirement_layers(requirements: Requirements) -> list[list[Requirement]]:
    """An app's requirements as install steps, in order: a list of specs is one step, a
    list of lists one step per list."""
    steps = ([requirements] if all(isinstance(item, str) for item in requirements)
             else requirements)
    return [[Requirement(spec) for spec in ([step] if isinstance(step, str) else step)]
            for step in steps if step]


def normalised(requirement: Requirement) -> str:
    """One spelling per requirement (name, extras and specifiers in canonical order)."""
    canonical = Requirement(str(requirement))
    canonical.name = canonicalize_name(requirement.name)
    canonical.extras = {canonicalize_name(extra) for extra in requirement.extras}
    return str(canonical)


@dataclass(frozen=True)
class ServerPackages:
    """The distributions the server's interpreter can import, and where they live."""

    site_dirs: list[str]
    distributions: dict[NormalizedName, importlib.metadata.Distribution]

    @classmethod
    def current(cls) -> ServerPackages:
        site_dirs = site.getsitepackages()
        if site.ENABLE_USER_SITE:
            site_dirs.append(site.getusersitepackages())
        found: dict[NormalizedName, importlib.metadata.Distribution] = {}
        for distribution in importlib.metadata.distributions():  # in sys.path order
            name = distribution.metadata["Name"]
            if name and _valid_version(distribution.version):
                found.setdefault(canonicalize_name(name), distribution)
        return cls([d for d in site_dirs if os.path.isdir(d)], found)

    def version(self, name: str) -> Version | None:
        distribution = self.distributions.get(canonicalize_name(name))
        return Version(distribution.version) if distribution is not None else None

    def satisfies(self, requirement: Requirement, extra: str = "") -> bool:
        """Whether the server already has what ``requirement`` asks for, its extras' own
        requirements included (one whose marker excludes this platform asks nothing)."""
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            return True
        version = self.version(requirement.name)
        if (requirement.url or version is None
                or not requirement.specifier.contains(version, prereleases=True)):
            return False
        return all(self.satisfies(dependency, name) for name in requirement.extras
                   for dependency in self._extra_requirements(requirement.name, name))

    def _extra_requirements(self, name: str, extra: str) -> list[Requirement]:
        """What ``name[extra]`` adds to ``name``'s own requirements."""
        distribution = self.distributions[canonicalize_name(name)]
        dependencies = [Requirement(spec) for spec in distribution.requires or []]
        return [d for d in dependencies if d.marker is not None
                and d.marker.evaluate({"extra": extra}) and not d.marker.evaluate({"extra": ""})]

    def pins(self) -> list[str]:
        return sorted(f"{name}=={self.version(name)}" for name in self.distributions)

    def write_view(self, site_packages: Path) -> None:
        """A .dist-info folder per distribution, with its metadata: what uv sees as
        installed. Its RECORD names its own files, so that uv replacing it removes it."""
        for name, distribution in self.distributions.items():
            folder = site_packages / f"{name.replace('-', '_')}-{self.version(name)}.dist-info"
            files = {"METADATA": (distribution.read_text("METADATA")
                                  or distribution.read_text("PKG-INFO") or ""),
                     VIEW_MARKER: ""}
            if (direct_url := distribution.read_text("direct_url.json")) is not None:
                files["direct_url.json"] = direct_url  # an editable or URL install
            files["RECORD"] = "".join(f"{folder.name}/{file},,\n" for file in [*files, "RECORD"])
            folder.mkdir()
            for file, text in files.items():
                (folder / file).write_text(text, encoding="utf-8")

    def fingerprint(self) -> dict[str, object]:
        """What an environment layered over these packages depends on."""
        return {"python": sys.version, "executable": sys.executable,
                "site_dirs": self.site_dirs, "packages": self.pins()}


def _valid_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def remove_view(site_packages: Path) -> None:
    for folder in site_packages.glob("*.dist-info"):
        if (folder / VIEW_MARKER).exists():
            shutil.rmtree(folder)


async def _in_thread(function: Callable[..., object], *args: object) -> None:
    """``function`` in a thread, awaited to its end even if the caller is cancelled
    meanwhile: a thread cannot be stopped, and the build's lock must outlast it."""
    running = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        await asyncio.wait({running})
        raise


def site_packages_of(environment: Path) -> Path:
    paths = {"base": str(environment), "platbase": str(environment)}
    return Path(sysconfig.get_path("purelib", "venv", vars=paths))


def python_of(environment: Path) -> Path:
    return environment / "bin" / "python"


class AppEnvironments:
    """The environments of the apps a worker serves, built on demand and kept in
    ``cache_dir``."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir.absolute()  # uv runs there

    @functools.cached_property
    def server(self) -> ServerPackages:
        return ServerPackages.current()

    async def prepare(self, requirements: Requirements) -> RunnerEnvironment | None:
        """The environment runners of an app with these requirements start with, built if
        no one has built it yet; None when the server has everything they ask for.

        Raises :class:`EnvironmentBuildFailed`."""
        layers = requirement_layers(requirements)
        if all(self.server.satisfies(r) for layer in layers for r in layer):
            return None
        environment = self.folder_for(layers)
        async with self._locked(environment.with_suffix(".lock")):
            if not (environment / COMPLETE_MARKER).exists():
                await self._build(environment, layers)
        bin_dir = str(python_of(environment).parent)
        return RunnerEnvironment(str(python_of(environment)), {
            "VIRTUAL_ENV": str(environment),
            "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)])})

    def folder_for(self, layers: list[list[Requirement]]) -> Path:
        """Where the environment of these install steps, over this server, is kept."""
        requirements = [sorted(normalised(r) for r in layer) for layer in layers]
        described = json.dumps([requirements, self.server.fingerprint()], sort_keys=True)
        return self.cache_dir / hashlib.sha256(described.encode()).hexdigest()[:24]

    @contextlib.asynccontextmanager
    async def _locked(self, path: Path) -> AsyncIterator[None]:
        """An exclusive lock on ``path`` (between processes, and between the runners of
        this one), polled so that waiting for it can be cancelled."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as lock:
            for attempt in itertools.count():
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 0:
                        log.info("environment %s: waiting for its build elsewhere", path.stem)
                    await asyncio.sleep(LOCK_POLL_SECONDS)
            yield  # closing the file releases it

    async def _build(self, environment: Path, layers: list[list[Requirement]]) -> None:
        if environment.exists():
            log.warning("environment %s is incomplete (its build was interrupted); building "
                        "it again", environment.name)
            await _in_thread(shutil.rmtree, environment)
        described = " then ".join(", ".join(map(str, layer)) for layer in layers)
        log.info("building environment %s for %s", environment.name, described)
        started = time.monotonic()
        await self._uv(environment, "creating the environment", "venv", "--quiet",
                       "--no-project", "--python", sys.executable, str(environment))
        site_packages = site_packages_of(environment)
        await _in_thread(self.server.write_view, site_packages)
        constraints = environment / CONSTRAINTS_FILE
        constraints.write_text("\n".join(self.server.pins()) + "\n", encoding="utf-8")
        for layer in layers:
            await self._install(environment, layer, constraints)
        await _in_thread(remove_view, site_packages)
        (site_packages / SERVER_PATH_FILE).write_text("".join(
            f"import site; site.addsitedir({path!r})\n" for path in self.server.site_dirs),
            encoding="utf-8")
        (environment / COMPLETE_MARKER).write_text(json.dumps(
            {"requirements": [[str(r) for r in layer] for layer in layers],
             "built_at": time.time()}), encoding="utf-8")
        log.info("environment %s built in %.1fs", environment.name, time.monotonic() - started)

    async def _install(self, environment: Path, layer: list[Requirement],
                       constraints: Path) -> None:
        what = f"installing {', '.join(map(str, layer))}"
        install = ["pip", "install", "--python", str(python_of(environment)),
                   *map(str, layer)]
        try:
            await self._uv(environment, what, *install, "--constraints", str(constraints))
        except EnvironmentBuildFailed as exc:
            log.info("environment %s: %s; trying again without the server's versions as "
                     "constraints", environment.name, exc)
            await self._uv(environment, what, *install)

    async def _uv(self, environment: Path, what: str, *args: str) -> None:
        """Run uv, its output into the log line by line; raises
        :class:`EnvironmentBuildFailed` with its last word if it fails."""
        # In the cache dir: no project's uv settings are picked up from where the server runs.
        process = await asyncio.create_subprocess_exec(
            uv.find_uv_bin(), *args, cwd=self.cache_dir,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert process.stdout is not None
        last_word = ""
        try:
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                if not line.strip():
                    continue
                log.info("environment %s: %s", environment.name, line)
                if not line.lstrip().startswith("hint:"):
                    last_word = _UV_PREFIX.sub("", line)
            code = await process.wait()
        finally:
            if process.returncode is None:  # cancelled: the worker is stopping
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if code != 0:
            raise EnvironmentBuildFailed(f"{what} failed: {last_word or f'uv exited with {code}'}")
