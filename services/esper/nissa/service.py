"""Nissa as an Esper server: `esper serve nissa`."""

from __future__ import annotations

import contextlib

import asyncpg
import grpc
from aiokafka.errors import KafkaError

from esper.leyline.v1 import nissa_pb2_grpc
from esper.nissa.alerts import AlertRules
from esper.nissa.config import NissaConfig
from esper.nissa.db import open_database
from esper.nissa.fanout import Fanout
from esper.nissa.health import IngestHealth
from esper.nissa.hub import EventHub
from esper.nissa.ingest import DB_ERRORS, HeartbeatWatcher, Ingestor
from esper.nissa.report import BatchReport
from esper.nissa.servicer import NissaServicer
from esper.nissa.workers import IngestWorkers, WorkerStartError
from esper.oona.producer import OonaProducer
from esper.runtime.server import Closer, ServiceSpec, StartupError

GRPC_SERVICE = "esper.leyline.v1.NissaService"


async def start(config: NissaConfig, server: grpc.aio.Server) -> Closer:  # type: ignore[override]
    try:
        pool = await open_database(config.postgres_dsn, config.postgres_connect_timeout)
    except (*DB_ERRORS, asyncpg.PostgresError) as exc:
        raise StartupError(f"postgres_dsn: cannot open the history database: {exc}") from None
    rules = AlertRules(config.thresholds())
    hub = EventHub()
    producer = OonaProducer(config.kafka_bootstrap, client_id="esper-nissa")
    await producer.start()
    fanout = Fanout(hub, producer)
    health = IngestHealth()
    try:
        ingest = await _start_ingest(config, pool, rules, fanout, health)
    except BaseException:
        await producer.stop(0)
        await pool.close()
        raise
    watcher = HeartbeatWatcher(pool, rules, config.heartbeat_check_s, producer)
    watcher.start()
    nissa_pb2_grpc.add_NissaServiceServicer_to_server(NissaServicer(pool, hub), server)

    async def close() -> None:
        # Last pushed runs first: watcher, ingest, producer, pool. Every step runs even
        # when one before it failed, so nothing started is left running.
        async with contextlib.AsyncExitStack() as steps:
            steps.push_async_callback(pool.close)
            steps.push_async_callback(producer.stop, 2.0)
            steps.push_async_callback(ingest.stop)
            steps.push_async_callback(watcher.stop)

    return close


async def _start_ingest(
    config: NissaConfig, pool: asyncpg.Pool, rules: AlertRules, fanout: Fanout,
    health: IngestHealth,
) -> Ingestor | IngestWorkers:
    """The ingest: worker processes, or (ingest_workers = 0) a consumer in this process."""
    if config.ingest_workers:
        workers = IngestWorkers(config, config.ingest_workers, fanout.apply, health)
        try:
            await workers.start()
        except WorkerStartError as exc:
            raise StartupError(str(exc)) from None
        return workers

    async def report(batch: BatchReport) -> None:
        fanout.apply(batch)

    ingestor = Ingestor(
        pool,
        config.kafka_bootstrap,
        group_id=config.consumer_group,
        rules=rules,
        on_report=report,
        batch_max=config.ingest_batch_max,
        health=health,
    )
    try:
        await ingestor.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        raise StartupError(f"kafka_bootstrap: cannot start the ingest: {exc}") from None
    return ingestor


SPEC = ServiceSpec(
    name="nissa",
    config_cls=NissaConfig,
    grpc_services=(GRPC_SERVICE,),
    start=start,  # type: ignore[arg-type]
    description="observability: ingests Oona into PostgreSQL, run history, alerts, /metrics",
)
