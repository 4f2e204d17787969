"""The README's "Many hosts" commands work as written: PostgreSQL, S3, two gateways, two
workers, a request through one gateway answered through the other.

The block runs as it is in the README, in bash with ``set -euo pipefail``, with a fresh
folder and free ports in the variables it reads; everything it started is stopped
afterwards (its process group, and PostgreSQL through pg_ctl), and the folder removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
TIMEOUT = 300


def readme_block() -> str:
    section = README.read_text().split("\n## Many hosts\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_run(length: int, start: int = 20000) -> int:
    """A port where ``length`` consecutive ports, and each of them + 10000 (SeaweedFS's
    gRPC ports), are free."""
    for base in range(start, 50000, length + 7):
        if all(_free(p) and _free(p + 10000) for p in range(base, base + length)):
            return base
    raise RuntimeError("no free ports")


def stop_postgres(base: Path) -> None:
    pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
    if (base / "pg" / "data" / "postmaster.pid").exists():
        subprocess.run(["runuser", "-u", "postgres", "--", str(pg_ctl), "-D",
                        str(base / "pg" / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder the postgres user can reach (pytest's are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="openfal-readme-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_readme_many_hosts_commands_work(base: Path) -> None:
    s3_port = free_run(5)
    gateways = free_run(3, s3_port + 100)
    env = {**os.environ, "BASE": str(base), "PG_PORT": str(gateways + 2),
           "S3_PORT": str(s3_port), "GW1": str(gateways), "GW2": str(gateways + 1),
           # the install's commands (openfal, weed) first, as in an activated venv
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("OPENFAL_KEY", "OPENFAL_STORE", "OPENFAL_FILES", "OPENFAL_SERVER"):
        env.pop(name, None)
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", readme_block()], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = shell.communicate(timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)  # gateways, workers, weed: they drain
        stop_postgres(base)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
    assert shell.returncode == 0, output
    assert output.rstrip().endswith('{"text":"hello"}'), output
