"""Connecting Tezzeret's dependencies (PostgreSQL, the broker, Urza) and making workers;
shared by the server (`esper serve tezzeret`) and standalone workers (`esper tezzeret
worker`). Kernel bytes go to Urza through its API (UploadKernel), so Tezzeret needs no
object store of its own."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg

from esper.oona import OonaProducer, ensure_topics
from esper.runtime.postgres import redact_dsn
from esper.runtime.server import StartupError
from esper.tezzeret.config import TezzeretConfig
from esper.tezzeret.errors import DB_CONNECTION_ERRORS
from esper.tezzeret.events import CompileEvents
from esper.tezzeret.jobs import JobStore
from esper.tezzeret.migrations import apply_migrations
from esper.tezzeret.pipeline import PipelineSettings
from esper.tezzeret.urza_client import UrzaClient
from esper.tezzeret.worker import CompileWorker, ProgressHook, WorkerSettings

# Pool bounds: short job-table queries from RPCs and a few workers fit in a handful.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10
# Seconds the broker gets to answer the topic check at start.
BROKER_START_TIMEOUT_S = 10.0


@dataclass
class Dependencies:
    config: TezzeretConfig
    pool: asyncpg.Pool
    store: JobStore
    urza: UrzaClient
    events: CompileEvents
    producer: OonaProducer
    workers: list[CompileWorker] = field(default_factory=list)

    def new_worker(self, *, progress_hook: ProgressHook | None = None) -> CompileWorker:
        c = self.config
        settings = WorkerSettings(
            bootstrap=c.kafka_bootstrap, group=c.consumer_group, lease_s=c.job_lease_s,
            pipeline=PipelineSettings(latency_samples=c.latency_samples, warmup_runs=c.warmup_runs,
                                      try_export=c.try_export, try_compile=c.try_compile))
        worker = CompileWorker(settings, self.store, self.urza, self.events,
                               progress_hook=progress_hook)
        self.workers.append(worker)
        return worker

    async def start_workers(self, count: int) -> None:
        for _ in range(count):
            await self.new_worker().start()

    async def close(self) -> None:
        for worker in self.workers:
            await worker.stop()
        await self.producer.stop(flush_timeout=2.0)
        await self.urza.close()
        with contextlib.suppress(*DB_CONNECTION_ERRORS):
            await asyncio.wait_for(self.pool.close(), 5.0)


async def _connect_postgres(config: TezzeretConfig) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            config.postgres_dsn, min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE,
            timeout=config.postgres_connect_timeout,
            command_timeout=config.dependency_timeout_s * 4)
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        return pool
    except (*DB_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise StartupError(f"postgres_dsn: cannot reach PostgreSQL at "
                           f"{redact_dsn(config.postgres_dsn)}: "
                           f"{type(exc).__name__}: {exc}") from None


async def connect(config: TezzeretConfig) -> Dependencies:
    """Connect everything; StartupError naming the first dependency that is unreachable."""
    pool = await _connect_postgres(config)
    try:
        await asyncio.wait_for(ensure_topics(config.kafka_bootstrap), BROKER_START_TIMEOUT_S)
    except Exception as exc:  # aiokafka raises a zoo of types for an unreachable broker
        await pool.close()
        raise StartupError(f"kafka_bootstrap: cannot reach the broker at {config.kafka_bootstrap}:"
                           f" {type(exc).__name__}: {exc}") from None
    producer = OonaProducer(config.kafka_bootstrap, client_id="esper-tezzeret")
    await producer.start()
    return Dependencies(config=config, pool=pool, store=JobStore(pool),
                        urza=UrzaClient(config.urza_address, config.dependency_timeout_s),
                        events=CompileEvents(producer), producer=producer)
