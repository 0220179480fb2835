"""Urza as a runtime service: config, start (connect PostgreSQL, migrate, seed the
built-in catalogue, connect the object store and Oona), and shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import grpc

from esper.leyline.v1 import urza_pb2_grpc
from esper.oona import OonaProducer
from esper.runtime.config import ConfigError, ServerConfig
from esper.runtime.postgres import redact_dsn
from esper.runtime.quota import RateQuota
from esper.runtime.server import Closer, ServiceSpec, StartupError
from esper.runtime.settings import KafkaSettings, ObjectStoreSettings, PostgresSettings
from esper.urza import db as dbmod
from esper.urza.catalog import Catalog
from esper.urza.errors import Unavailable
from esper.urza.events import CatalogFeed
from esper.urza.kernels import MAX_KERNEL_BYTES, KernelRegistry
from esper.urza.servicer import UrzaServicer
from esper.urza.store import DEFAULT_REGION, KernelStore
from esper.urza.upload import DEFAULT_MAX_KERNEL_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UrzaConfig(PostgresSettings, KafkaSettings, ObjectStoreSettings, ServerConfig):
    # Seconds an RPC waits for a database connection or query before answering UNAVAILABLE.
    db_timeout: float = 3.0
    # Seconds an RPC waits for the object store before answering UNAVAILABLE.
    s3_timeout: float = 3.0
    # Region the minio client signs for (fixed, so it never asks the store for it).
    s3_region: str = DEFAULT_REGION
    # Publish catalogue changes on Oona (esper.catalog.events); off for a DB-only setup.
    publish_events: bool = True
    # Insert the built-in blueprint catalogue on start (idempotent).
    seed_builtin: bool = True
    # Largest kernel UploadKernel stores, in bytes; a larger one is RESOURCE_EXHAUSTED.
    max_kernel_bytes: int = DEFAULT_MAX_KERNEL_BYTES
    # RecordFieldReport calls one identity may make per minute (field reports move the
    # search ranking); beyond it RESOURCE_EXHAUSTED says when to retry.
    field_reports_per_minute: int = 600

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.field_reports_per_minute <= 1_000_000:
            raise ConfigError("field_reports_per_minute: must be within [1, 1000000]")
        for name in ("db_timeout", "s3_timeout"):
            if not 0 < getattr(self, name) <= 60:
                raise ConfigError(f"{name}: must be within (0, 60] seconds")
        if not self.s3_region:
            raise ConfigError("s3_region: must not be empty")
        if not 1 <= self.max_kernel_bytes <= MAX_KERNEL_BYTES:
            raise ConfigError(f"max_kernel_bytes: must be within [1, {MAX_KERNEL_BYTES}]")


async def connect_database(config: UrzaConfig) -> dbmod.Database:
    """Pool + migrations; StartupError naming postgres_dsn when unreachable."""
    where = redact_dsn(config.postgres_dsn)
    try:
        pool = await asyncio.wait_for(
            dbmod.create_pool(config.postgres_dsn, config.postgres_connect_timeout, config.db_timeout),
            config.postgres_connect_timeout * 2)
    except Exception as exc:  # noqa: BLE001 - bad DSN, no such database, auth: all fatal here
        raise StartupError(f"postgres_dsn: cannot use PostgreSQL at {where}: "
                           f"{type(exc).__name__}: {exc}") from None
    database = dbmod.Database(pool, config.db_timeout)
    try:
        async with pool.acquire(timeout=config.postgres_connect_timeout) as conn:
            await dbmod.apply_migrations(conn)
    except dbmod.MigrationError as exc:
        await database.close()
        raise StartupError(f"postgres_dsn: cannot migrate Urza's schema at {where}: {exc}") from None
    except (*dbmod.CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        await database.close()
        raise StartupError(f"postgres_dsn: cannot reach PostgreSQL at {where}: "
                           f"{type(exc).__name__}: {exc}") from None
    return database


async def connect_store(config: UrzaConfig) -> KernelStore:
    store = KernelStore(config.s3_endpoint, config.s3_access_key, config.s3_secret_key,
                        config.s3_bucket, region=config.s3_region,
                        connect_timeout_s=config.s3_timeout, read_timeout_s=config.s3_timeout * 3)
    try:
        await store.ensure_bucket()
    except Unavailable as exc:
        store.close()
        raise StartupError(f"s3_endpoint: cannot use the object store: {exc}") from None
    return store


async def seed_builtins(catalog: Catalog) -> None:
    from esper.blueprints.catalog import builtin_blueprints

    added = await catalog.seed(list(builtin_blueprints()))
    log.info("built-in catalogue seeded", extra={"added": added})


async def start(config: UrzaConfig, server: grpc.aio.Server) -> Closer:
    database = await connect_database(config)
    closers: list = [database.close]
    try:
        store = await connect_store(config)
        closers.append(lambda: asyncio.to_thread(store.close))
        producer = None
        if config.publish_events:
            producer = OonaProducer(config.kafka_bootstrap, client_id="urza")
            await producer.start()
            closers.append(producer.stop)
        feed = CatalogFeed(database, config.postgres_dsn, producer, config.postgres_connect_timeout)
        feed.start()
        closers.append(feed.stop)
        catalog = Catalog(database, feed)
        if config.seed_builtin:
            await seed_builtins(catalog)
    except BaseException:
        await _close_all(closers)
        raise
    servicer = UrzaServicer(catalog, KernelRegistry(database, store, feed), feed,
                            max_kernel_bytes=config.max_kernel_bytes,
                            report_quota=RateQuota("RecordFieldReport", config.field_reports_per_minute))
    urza_pb2_grpc.add_UrzaServiceServicer_to_server(servicer, server)

    async def close() -> None:
        await _close_all(closers)

    return close


async def _close_all(closers: list) -> None:
    for closer in reversed(closers):
        try:
            await closer()
        except Exception:
            log.exception("error while closing")


SPEC = ServiceSpec(
    name="urza",
    config_cls=UrzaConfig,
    grpc_services=("esper.leyline.v1.UrzaService",),
    start=start,
    description="blueprint catalogue and kernel library (PostgreSQL + object store)",
)
