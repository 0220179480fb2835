"""The stack's state directory: `stack.json` (ports, database, bucket), a lock so two
`esper up`/`down` never interleave, and the writability check done before anything starts.

Ports are chosen free on the first `up` and remembered, so a later `up` brings every
component back on the same addresses (servers and clients configured once keep working).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from esper.runtime.infra.errors import InfraConfigError
from esper.runtime.infra.objectstore import DEFAULT_BUCKET
from esper.runtime.infra.ports import free_port, validate_port
from esper.runtime.infra.postgres import DEFAULT_DATABASE

STACK_FILE = "stack.json"
LOCK_FILE = "stack.lock"
STATE_VERSION = 1
INFRA_COMPONENTS = ("postgres", "broker", "objectstore")
SERVER_NAMES = ("urza", "tezzeret", "tamiyo", "nissa")
# Each server also exposes Prometheus /metrics on its own HTTP port.
METRICS_SUFFIX = "-metrics"
# Tamiyo may run as several replicas sharing its runs in PostgreSQL (`esper up
# --tamiyo-replicas N`); more than a handful only add processes to a laptop.
MAX_TAMIYO_REPLICAS = 16


def replica_names(replicas: int) -> tuple[str, ...]:
    """Tamiyo's components: `tamiyo`, then `tamiyo-2` … `tamiyo-N`."""
    return ("tamiyo", *(f"tamiyo-{i}" for i in range(2, replicas + 1)))


def server_components(replicas: int = 1) -> tuple[str, ...]:
    """The server processes of the stack, in start order (Tamiyo's replicas in its place)."""
    return tuple(n for name in SERVER_NAMES for n in (replica_names(replicas) if name == "tamiyo" else (name,)))


def service_of(component: str) -> str:
    """The server a component runs (`tamiyo-2` runs `tamiyo`)."""
    return "tamiyo" if component.startswith("tamiyo") else component


def port_names(replicas: int = 1) -> tuple[str, ...]:
    """Every port the stack needs, in the order the table lists components."""
    servers = tuple(n for name in server_components(replicas) for n in (name, name + METRICS_SUFFIX))
    return INFRA_COMPONENTS + servers


def check_replicas(value: object, what: str) -> int:
    """A replica count within 1..MAX_TAMIYO_REPLICAS, or InfraConfigError naming `what`."""
    try:
        replicas = int(str(value).strip())
    except ValueError:
        replicas = 0
    if not 1 <= replicas <= MAX_TAMIYO_REPLICAS:
        raise InfraConfigError(f"{what}: {value!r} must be a whole number from 1 to {MAX_TAMIYO_REPLICAS}")
    return replicas


@dataclass
class StackState:
    """What `stack.json` holds."""

    ports: dict[str, int] = field(default_factory=dict)
    database: str = DEFAULT_DATABASE
    bucket: str = DEFAULT_BUCKET
    # Mutual TLS between every part (`esper up --tls`, esper.runtime.stack.tls).
    tls: bool = False
    # Tamiyo processes behind one address list (`esper up --tamiyo-replicas N`).
    tamiyo_replicas: int = 1

    def to_json(self) -> str:
        body = {"version": STATE_VERSION, "ports": self.ports, "database": self.database,
                "bucket": self.bucket, "tls": self.tls, "tamiyo_replicas": self.tamiyo_replicas}  # fmt: skip
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @property
    def servers(self) -> tuple[str, ...]:
        return server_components(self.tamiyo_replicas)

    def tamiyo_target(self) -> str:
        """The one address of every Tamiyo replica (an address list gRPC calls round robin)."""
        return ",".join(f"127.0.0.1:{self.ports.get(name, 0)}" for name in replica_names(self.tamiyo_replicas))


def load_state(state_dir: Path) -> StackState | None:
    path = state_dir / STACK_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InfraConfigError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(data, dict) or not isinstance(data.get("ports", {}), dict):
        raise InfraConfigError(f"{path}: unexpected content; fix or delete it")
    replicas = check_replicas(data.get("tamiyo_replicas", 1), f"{path} tamiyo_replicas")
    ports = {
        name: validate_port(value, f"{path} ports.{name}")
        for name, value in data.get("ports", {}).items()
        if name in port_names(replicas)
    }
    return StackState(
        ports=ports,
        database=str(data.get("database", DEFAULT_DATABASE)),
        bucket=str(data.get("bucket", DEFAULT_BUCKET)),
        tls=data.get("tls", False) is True,
        tamiyo_replicas=replicas,
    )


def save_state(state_dir: Path, state: StackState) -> None:
    path = state_dir / STACK_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.to_json())
    tmp.replace(path)


def resolve_ports(saved: Mapping[str, int], requested: Mapping[str, object],
                  replicas: int = 1) -> dict[str, int]:
    """Requested ports win over saved ones; the rest are allocated free. All distinct."""
    names = port_names(replicas)
    unknown = sorted(set(requested) - set(names))
    if unknown:
        raise InfraConfigError(
            f"unknown port name {unknown[0]!r} (known: {', '.join(names)})"
        )
    ports = {name: port for name, port in saved.items() if name in names}
    ports.update({name: validate_port(value, name) for name, value in requested.items()})
    taken = set(ports.values())
    for name in names:
        if name not in ports:
            port = free_port()
            while port in taken:
                port = free_port()
            ports[name] = port
            taken.add(port)
    by_port: dict[int, str] = {}
    for name in names:
        other = by_port.setdefault(ports[name], name)
        if other != name:
            raise InfraConfigError(f"{name}: port {ports[name]} is also assigned to {other}")
    return {name: ports[name] for name in names}


def prepare_state_dir(state_dir: Path) -> Path:
    """Create `state_dir` if needed and prove it is writable; return it absolute."""
    path = Path(state_dir).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InfraConfigError(f"state dir {path} is not writable: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state dir for one up/down."""
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
