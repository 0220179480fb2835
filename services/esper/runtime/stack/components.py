"""The processes of the local stack (seven, and one more per extra Tamiyo replica), built
from a state dir and its ports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from esper.runtime.infra.broker import Broker
from esper.runtime.infra.objectstore import ObjectStore
from esper.runtime.infra.postgres import PostgresServer
from esper.runtime.infra.process import ManagedProcess
from esper.runtime.stack.servers import ServerProcess
from esper.runtime.stack.state import METRICS_SUFFIX, SERVER_NAMES, StackState, service_of
from esper.runtime.stack.tls import probe_security, server_env


class Component(Protocol):
    """What the stack needs of each process, infrastructure or server."""

    process: ManagedProcess
    port: int

    def launch(self) -> None: ...
    def wait_ready(self, timeout_s: float = ...) -> None: ...
    def is_ready(self) -> bool: ...
    def stop(self) -> bool: ...


@dataclass
class Stack:
    """Every component of one state dir, in start order (infrastructure, then servers)."""

    state_dir: Path
    state: StackState
    postgres: PostgresServer
    broker: Broker
    objectstore: ObjectStore
    servers: dict[str, ServerProcess]

    @property
    def infra(self) -> dict[str, Component]:
        return {"postgres": self.postgres, "broker": self.broker, "objectstore": self.objectstore}

    @property
    def components(self) -> dict[str, Component]:
        return {**self.infra, **self.servers}

    def address(self, name: str) -> str:
        """How a user reaches a component (a DSN, a URL or HOST:PORT)."""
        if name == "postgres":
            return self.postgres.dsn()
        if name == "objectstore":
            return self.objectstore.endpoint().url
        component = self.components[name]
        return component.address  # type: ignore[attr-defined, no-any-return]


def connection_settings(state: StackState, postgres: PostgresServer, broker: Broker,
                        objectstore: ObjectStore) -> dict[str, str]:  # fmt: skip
    """The `ESPER_*` settings every server gets: where the infrastructure and its peers are."""
    endpoint = objectstore.endpoint()
    settings = {
        "ESPER_POSTGRES_DSN": postgres.dsn(),
        "ESPER_KAFKA_BOOTSTRAP": broker.bootstrap,
        "ESPER_S3_ENDPOINT": endpoint.url,
        "ESPER_S3_ACCESS_KEY": endpoint.access_key,
        "ESPER_S3_SECRET_KEY": endpoint.secret_key,
        "ESPER_S3_BUCKET": endpoint.bucket,
    }
    for name in SERVER_NAMES:
        settings[f"ESPER_{name.upper()}_ADDRESS"] = f"127.0.0.1:{state.ports[name]}"
    settings["ESPER_TAMIYO_ADDRESS"] = state.tamiyo_target()
    return settings


def build_stack(state_dir: Path, state: StackState) -> Stack:
    ports = state.ports
    postgres = PostgresServer(state_dir, ports["postgres"], database=state.database)
    broker = Broker(state_dir, ports["broker"])
    objectstore = ObjectStore(state_dir, ports["objectstore"], state.bucket)
    settings = connection_settings(state, postgres, broker, objectstore)
    probe = probe_security(state_dir, state.tls)
    servers = {
        name: ServerProcess(state_dir, name, ports[name], ports[name + METRICS_SUFFIX],
                            {**settings, **server_env(state_dir, service_of(name), state.tls)},
                            security=probe, service=service_of(name))
        for name in state.servers
    }
    return Stack(state_dir, state, postgres, broker, objectstore, servers)
