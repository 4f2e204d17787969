"""A runner template: imports what runners need once, then forks each new runner.

A cold start is mostly imports: openfal's runner, for a diffusion app torch, diffusers and
transformers (seconds), then the pipeline's own modules and what they pull in (peft,
accelerate, the text encoders' models: about another second). A worker starts one template
per Python environment (the server's, or an app's own: worker/templates.py) once the first
runner of that environment is set up. The template imports ``openfal.runner``, the modules
its apps name in ``runtime_modules`` and the library modules that first runner had imported
by the end of its ``setup()`` (:func:`library_modules`: never the app's own code), read as
JSON from its stdin. It imports them in a thread at the lowest CPU priority, so that the
runner serving meanwhile keeps the CPU; then it waits on its control socket
(``SOCK_SEQPACKET``: one message a request). Each request holds a new runner's socket (as
``SCM_RIGHTS``), its app and its environment. The template forks; the child becomes the
runner, in a session of its own, with exactly that environment. The template answers the
child's pid. The worker watches the child's exit through a pidfd, so the kernel reaps the
children (``SIGCHLD`` ignored here).

Forking is only safe from a process with one thread and no CUDA context. Importing torch
starts thread pools (OpenMP's, and numpy's OpenBLAS: a thread per core), so the template
imports with them set to one thread (``THREAD_VARIABLES``), and each runner gives them the
threads a spawned runner's would have after the fork: its environment's setting, else the
cores it may use (BLAS's through threadpoolctl). After its imports the template checks that
it runs one thread, that CUDA is not initialised and, where numpy was imported, that
threadpoolctl is there; it refuses to serve otherwise, and the worker then starts runners as
plain processes. It exits when the worker's end of the control socket closes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import signal
import site
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Iterable
from typing import Any, NoReturn

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1024 * 1024  # an environment with its secrets


# What OpenMP and BLAS libraries read for their thread count when they load (OpenBLAS reads
# the first one set of its own, then OpenMP's).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def library_modules(app_module: str) -> list[str]:
    """The modules imported so far that belong to the standard library or to installed
    packages (openfal's included), in import order. Left out: the app's own code (its
    module's top-level package, and anything outside those folders), which may do anything
    when imported, and built-in modules, always there."""
    folders = _library_folders()
    app_package = app_module.partition(".")[0]
    in_library: dict[str, bool] = {}
    names = []
    for name, module in list(sys.modules.items()):
        package = name.partition(".")[0]
        if package not in in_library:
            in_library[package] = package == "openfal" or (
                package != app_package and _located_in(sys.modules.get(package), folders))
        if module is not None and in_library[package] and name != "__main__":
            names.append(name)
    return names


def _library_folders() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    folders = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders.update(site.getsitepackages())
    return tuple(os.path.join(folder, "") for folder in folders)


def _located_in(module: Any, folders: tuple[str, ...]) -> bool:
    location = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])),
                                                          None)
    return isinstance(location, str) and location.startswith(folders)


def _imported_at_low_priority(modules: list[str]) -> None:
    """Import ``modules`` (:func:`_imported`) in a thread at the lowest CPU priority (nice is
    per thread on Linux): the runner that started the template keeps the CPU while it serves
    (on two cores, a busy neighbour stalls its torch threads at every parallel region). The
    forks are made from the main thread, at the usual priority, so the runners are too."""
    def import_niced() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        _imported(modules)

    importer = threading.Thread(target=import_niced, name="openfal-template-imports")
    importer.start()
    importer.join()
    # A joined thread leaves the process a moment later; forking meanwhile would copy it.
    deadline = time.monotonic() + 5
    while _threads_running() > 1 and time.monotonic() < deadline:
        time.sleep(0.001)


def _threads_running() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1


def _imported(modules: Iterable[str]) -> None:
    """Import ``modules`` with their thread pools at one thread (see the module docstring).
    A module that fails is left out: the runner that needs it reports it properly."""
    inherited = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, "1"))
    failed: list[str] = []
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed.append(f"{name} ({exc})")
    finally:
        for name, value in inherited.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    if failed:
        log.info("runner template: %d modules not imported, the first: %s", len(failed),
                 failed[0])


def _thread_count(*variables: str) -> int:
    """The threads the first of ``variables`` set asks for, else the cores this may use."""
    for name in variables:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0))


def _restore_threads() -> None:
    """In a forked runner: torch's and BLAS's thread pools, imported single-threaded, as a
    spawned runner's would be."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(_thread_count("OMP_NUM_THREADS"))
    if "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(_thread_count("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"),
                          user_api="blas")


def _unsafe_to_fork() -> str | None:
    """Why forking now would give broken runners, if it would."""
    threads = _threads_running()
    if threads > 1:
        return f"the template runs {threads} threads after its imports"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA was initialised by the template's imports"
    if "numpy" in sys.modules and importlib.util.find_spec("threadpoolctl") is None:
        return "threadpoolctl is not installed: forked runners' BLAS would stay single-threaded"
    return None


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message).encode())


def _become_runner(control: socket.socket, fd: int, request: dict[str, Any]) -> NoReturn:
    """In the forked child: the runner of ``request["app"]`` on socket ``fd``."""
    from openfal.runner.process import run_runner

    control.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # its own children are its to wait for
    os.setsid()  # a process group of its own, as a spawned runner has: killed as one
    os.environ.clear()
    os.environ.update(request["env"])
    _restore_threads()
    run_runner(request["app"], fd, forked=True)


def serve(control: socket.socket) -> None:
    while True:
        message, fds, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, 1)
        if not message:
            return  # the worker is gone
        try:
            request = json.loads(message)
            [fd] = fds
        except ValueError:
            for fd in fds:
                os.close(fd)
            _send(control, {"error": "malformed fork request"})
            continue
        pid = os.fork()
        if pid == 0:
            _become_runner(control, fd, request)
        os.close(fd)
        _send(control, {"pid": pid})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="openfal-runner-template",
        description="Reads the modules to import from stdin: a JSON list of names.")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    control = socket.socket(fileno=args.fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    preload = json.load(sys.stdin)
    _imported_at_low_priority(["openfal.runner.process", *preload])
    refusal = _unsafe_to_fork()
    if refusal is not None:
        _send(control, {"error": refusal})
        return
    _send(control, {"ready": True})
    serve(control)


if __name__ == "__main__":
    main()
