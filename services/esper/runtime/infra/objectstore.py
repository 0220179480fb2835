"""The S3-compatible object store of the local stack: `localbucket` (PyPI), which keeps
buckets as folders under `<state>/objectstore/data`, so kernels survive `down`/`up`.

localbucket does not check credentials; the minio client still signs its requests, so the
stack hands out a fixed local key pair. It lacks multi-object delete (`remove_objects`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio

from esper.runtime.infra.errors import InfraConfigError
from esper.runtime.infra.launcher import LoopbackProcess
from esper.runtime.infra.paths import log_path, pid_path
from esper.runtime.infra.ports import LOOPBACK, ensure_port_free, tcp_accepts
from esper.runtime.infra.process import ManagedProcess, ProcessSpec

NAME = "objectstore"
# The bucket kernels live in (the same default as the services' `s3_bucket` setting).
DEFAULT_BUCKET = "esper-kernels"
# localbucket accepts any credentials; these only make the minio client's signing happy.
ACCESS_KEY = "esper-local"
SECRET_KEY = "esper-local-secret"
# A fixed region stops the minio client from asking for the bucket location
# (GetBucketLocation), which localbucket does not implement.
REGION = "us-east-1"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
# Probe requests must fail fast: no retries, short timeouts.
PROBE_CONNECT_TIMEOUT_S = 1.0
PROBE_READ_TIMEOUT_S = 3.0
# S3 bucket naming rules (3-63 chars, lower-case letters, digits, dots and hyphens).
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class ObjectStoreEndpoint:
    """Everything a minio client needs to reach the store."""

    endpoint: str  # host:port, as `Minio(endpoint, ...)` takes it
    access_key: str
    secret_key: str
    bucket: str
    region: str = REGION
    secure: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def client(self, http_client: urllib3.PoolManager | None = None) -> Minio:
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http_client,
        )


def validate_bucket_name(name: str) -> str:
    if not BUCKET_NAME.match(name):
        raise InfraConfigError(
            f"bucket name {name!r} is not a valid S3 bucket name "
            "(3-63 lower-case letters, digits, '.' or '-')"
        )
    return name


class ObjectStore(LoopbackProcess):
    """A localbucket server on 127.0.0.1:`port` with its data under `state_dir`."""

    ready_what = "answering S3 requests"
    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        state_dir: Path,
        port: int,
        bucket: str = DEFAULT_BUCKET,
        *,
        die_with_parent: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.bucket = validate_bucket_name(bucket)
        self.root = self.state_dir / NAME
        self.data_dir = self.root / "data"
        self.process = ManagedProcess(
            ProcessSpec(
                name=NAME,
                argv=[
                    sys.executable,
                    "-m",
                    "localbucket",
                    "--host",
                    LOOPBACK,
                    "--port",
                    str(port),
                    str(self.data_dir),
                ],
                log_path=log_path(self.state_dir, NAME),
                pid_path=pid_path(self.state_dir, NAME),
                die_with_parent=die_with_parent,
                stop_grace_s=STOP_GRACE_S,
            )
        )

    def endpoint(self, bucket: str | None = None) -> ObjectStoreEndpoint:
        return ObjectStoreEndpoint(self.address, ACCESS_KEY, SECRET_KEY, bucket or self.bucket)

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ObjectStoreEndpoint:
        """Start (unless running), wait for a real list_buckets call, ensure the bucket."""
        self.ensure_running(timeout_s)
        self.ensure_bucket(self.bucket)
        return self.endpoint()

    def launch(self) -> None:
        ensure_port_free(self.port, NAME)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()

    def is_ready(self) -> bool:
        """A real S3 call through the minio client: ListBuckets."""
        if not tcp_accepts(self.port):
            return False
        self.endpoint().client(_probe_http_client()).list_buckets()
        return True

    def ensure_bucket(self, name: str) -> bool:
        """Create bucket `name` if missing; True when it was created."""
        client = self.endpoint(validate_bucket_name(name)).client()
        if client.bucket_exists(name):
            return False
        client.make_bucket(name)
        return True


def _probe_http_client() -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=PROBE_CONNECT_TIMEOUT_S, read=PROBE_READ_TIMEOUT_S),
        retries=urllib3.Retry(total=0),
    )
