"""`esper serve tamiyo`: the strategic controller's gRPC server."""

from __future__ import annotations

import asyncpg
import grpc

from esper.leyline.v1 import tamiyo_pb2_grpc
from esper.oona import OonaProducer
from esper.policy import HeuristicPolicy
from esper.runtime.postgres import CONNECTION_ERRORS, MigrationError, redact_dsn
from esper.runtime.server import Closer, ServiceSpec, StartupError
from esper.tamiyo.batcher import DecisionBatcher
from esper.tamiyo.config import TamiyoConfig
from esper.tamiyo.decider import Decider
from esper.tamiyo.events import DecisionEvents
from esper.tamiyo.heuristic_file import load_heuristic_config
from esper.tamiyo.kernel_supply import KernelSupply
from esper.tamiyo.policies.errors import PolicyArtifactError
from esper.tamiyo.policy_registry import PolicyRegistry
from esper.tamiyo.run_store import RunBook, RunStore
from esper.tamiyo.runs import RunRegistry
from esper.tamiyo.servicer import TamiyoServicer
from esper.tamiyo.session import SessionContext
from esper.tamiyo.urza_candidates import UrzaCandidates

__all__ = ["SPEC", "TamiyoConfig", "start"]

# Seconds the decision producer may take at shutdown to send what it buffered: decisions
# are history, not control (the session already delivered them), so a dead broker must
# not hold the shutdown up long.
PRODUCER_FLUSH_S = 2.0


async def start(config: TamiyoConfig, server: grpc.aio.Server) -> Closer:
    heuristic = HeuristicPolicy(load_heuristic_config(config.heuristic_config)) if config.heuristic_config else None
    policies = PolicyRegistry(heuristic, torch_threads=config.torch_threads)
    if config.gnn_artifact:
        try:
            await policies.load_gnn(config.gnn_artifact, config.gnn_artifact_sha256)
        except PolicyArtifactError as exc:
            raise StartupError(f"gnn_artifact: {exc}") from None
    store = await _run_store(config) if config.postgres_dsn else None  # first: fails fast, holds nothing
    urza = UrzaCandidates(config.urza_address, config.urza_timeout_s, config.candidate_cache_s)
    urza.start_watch()
    supply = KernelSupply(config.tezzeret_address, config.urza_address, config.compile_request_timeout_s)
    decider = Decider(policies, urza, supply, DecisionBatcher(config.gnn_batch_window_ms / 1000, config.gnn_workers))
    producer = OonaProducer(config.kafka_bootstrap, client_id="esper-tamiyo") if config.publish_events else None
    if producer is not None:
        await producer.start()
    registry = RunRegistry(config.max_runs, config.max_run_graph_bytes, config.max_runs_per_owner)
    runs = RunBook(registry, store)
    shared = SessionContext(config, runs, decider, DecisionEvents(producer))
    tamiyo_pb2_grpc.add_TamiyoServiceServicer_to_server(TamiyoServicer(shared), server)

    async def close() -> None:
        decider.close()
        await runs.close()
        await supply.close()
        await urza.close()
        if producer is not None:
            await producer.stop(flush_timeout=PRODUCER_FLUSH_S)

    return close


async def _run_store(config: TamiyoConfig) -> RunStore:
    """The runs shared by replicas; StartupError naming postgres_dsn when unusable."""
    try:
        return await RunStore.connect(config.postgres_dsn, config.postgres_connect_timeout,
                                      config.max_runs, config.max_runs_per_owner)
    except (MigrationError, *CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise StartupError(f"postgres_dsn: cannot keep runs in PostgreSQL at {redact_dsn(config.postgres_dsn)}: "
                           f"{type(exc).__name__}: {exc}") from None


SPEC = ServiceSpec(
    name="tamiyo",
    config_cls=TamiyoConfig,
    grpc_services=("esper.leyline.v1.TamiyoService",),
    start=start,
    description="the strategic controller: turns training snapshots into adaptation decisions",
)
