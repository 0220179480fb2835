"""Local infrastructure processes for `esper up` and the pytest fixtures: PostgreSQL, the
Kafka-compatible broker (tansu) and the S3-compatible object store (localbucket), each on
127.0.0.1 under a state directory, managed through pid files and log files."""

from esper.runtime.infra.broker import Broker
from esper.runtime.infra.errors import (
    InfraConfigError,
    InfraError,
    MissingBinaryError,
    PortInUseError,
    ReadinessError,
)
from esper.runtime.infra.objectstore import ObjectStore, ObjectStoreEndpoint
from esper.runtime.infra.ports import free_port, validate_port
from esper.runtime.infra.postgres import PostgresServer
from esper.runtime.infra.process import ManagedProcess, ProcessSpec

__all__ = [
    "Broker",
    "InfraConfigError",
    "InfraError",
    "ManagedProcess",
    "MissingBinaryError",
    "ObjectStore",
    "ObjectStoreEndpoint",
    "PortInUseError",
    "PostgresServer",
    "ProcessSpec",
    "ReadinessError",
    "free_port",
    "validate_port",
]
