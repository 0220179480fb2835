"""One way to run any Esper gRPC server: health, reflection, one interceptor for tracing,
metrics, auth and request checks (esper.runtime.interceptor), structured logs, /metrics,
and graceful shutdown on SIGTERM/SIGINT (health flips to NOT_SERVING first, in-flight RPCs
get the grace period to finish).

A service describes itself with a `ServiceSpec`; its `start` coroutine connects its
dependencies, registers its servicers and returns a `Closer` run at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from esper.rpc.channels import MAX_MESSAGE_BYTES
from esper.rpc.tracing import configure_tracing
from esper.runtime.auth import AuthPolicy
from esper.runtime.config import ConfigError, ServerConfig
from esper.runtime.interceptor import ServerInterceptor
from esper.runtime.logs import configure_logging
from esper.runtime.metrics import start_metrics_server
from esper.runtime.tls import server_credentials

log = logging.getLogger("esper.runtime.server")

Closer = Callable[[], Awaitable[None]]

# The gRPC message size limit is the client layer's (esper.rpc.channels): kernel chunks
# are <= 4 MiB, snapshots far smaller; anything bigger is hostile and refused by gRPC
# itself with RESOURCE_EXHAUSTED.


# The shortest interval between a client's pings the servers tolerate.
MIN_CLIENT_PING_INTERVAL_MS = 60_000


class StartupError(RuntimeError):
    """A dependency is unreachable or misconfigured at start; the message names it."""


async def _no_close() -> None:
    return None


@dataclass(frozen=True)
class ServiceSpec:
    """What the runtime needs to know about a service."""

    # Short name: "urza", "tezzeret", "tamiyo", "nissa".
    name: str
    # The service's config dataclass.
    config_cls: type[ServerConfig]
    # Full names of the gRPC services it registers (for health and reflection).
    grpc_services: Sequence[str]
    # Connects dependencies and adds servicers to the server; returns the shutdown hook.
    start: Callable[[ServerConfig, grpc.aio.Server], Awaitable[Closer]]
    # One-line description for `esper serve --help`.
    description: str = ""


@dataclass
class RunningServer:
    """A started server; `stop()` shuts it down gracefully."""

    spec: ServiceSpec
    config: ServerConfig
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    port: int
    metrics_port: int
    closer: Closer = _no_close
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()  # every service -> NOT_SERVING
        log.info("shutting down", extra={"service": self.spec.name, "grace_s": grace})
        await self.server.stop(grace)
        await self.closer()
        log.info("stopped", extra={"service": self.spec.name})

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def transport_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Keepalive enforcement and connection age: a dead or silent peer is found and its
    streams freed; a ping flood is refused (GOAWAY); no connection lives forever (clients
    reconnect, and a Session resumes)."""
    return [
        ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        # Clients ping every esper.rpc.channels.KEEPALIVE_S (300 s); more often than this
        # is abuse, answered with GOAWAY after two strikes.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", int(config.max_connection_idle_s * 1000)),
        ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
    ]


async def start_server(spec: ServiceSpec, config: ServerConfig, *, reuse_port: bool = False) -> RunningServer:
    """Start `spec` with `config`; returns once it is SERVING. `reuse_port`: bind with
    SO_REUSEPORT, sharing the port with the other processes of the same server
    (esper.runtime.processes); off, a port already bound is refused."""
    configure_tracing(spec.name, config.otel_exporter, config.otlp_endpoint)
    try:  # bad security settings fail before anything is connected or bound
        credentials = server_credentials(config)
        interceptor = ServerInterceptor(AuthPolicy.from_config(config))
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", int(reuse_port)),
            *transport_options(config),
        ],
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    closer = await spec.start(config, server)
    try:
        address = f"{config.host}:{config.port}"
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        await closer()
        raise StartupError(f"port: cannot bind {config.host}:{config.port}: {exc}") from None
    if port == 0:
        await closer()
        raise StartupError(f"port: cannot bind {config.host}:{config.port} (in use?)")
    names = [*spec.grpc_services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    try:
        await server.start()
        metrics_port = -1
        if config.metrics_port != -1:
            metrics_port = start_metrics_server(config.host, config.metrics_port)
    except BaseException as exc:
        # Whatever the service connected or started must not outlive a failed start.
        await server.stop(0)
        await closer()
        if isinstance(exc, OSError):
            raise StartupError(f"metrics_port: cannot serve /metrics on "
                               f"{config.host}:{config.metrics_port}: {exc}") from None
        raise
    for name in ("", *spec.grpc_services):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={"service": spec.name, "address": f"{config.host}:{port}", "metrics_port": metrics_port,
               "tls": config.tls, "mutual_tls": config.tls and config.tls_client_auth,
               "auth": config.auth},
    )
    return RunningServer(spec, config, server, health, port, metrics_port, closer)


def _print_serving(running: RunningServer) -> None:
    print(f"{running.spec.name} serving on {running.address} (metrics :{running.metrics_port})", flush=True)


async def serve_forever(spec: ServiceSpec, config: ServerConfig, *, reuse_port: bool = False,
                        on_serving: Callable[[RunningServer], None] = _print_serving) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; `on_serving` is told once it
    serves (by default it prints where)."""
    configure_logging(config.log_format, config.log_level)
    running = await start_server(spec, config, reuse_port=reuse_port)
    on_serving(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
