"""PostgreSQL access for Urza: the asyncpg pool, versioned migrations and the
translation of connection failures into `Unavailable`.

Urza's tables live in the PostgreSQL schema `urza` (the local stack shares one database
between services; Nissa has its own schema), found through the connections' search_path.
Migrations are the files `migrations/NNNN_name.sql`, applied in order at start, each in
its own transaction together with its row in `urza.schema_migrations`, all under a session
advisory lock so two Urza processes starting at once never race. An applied migration
whose file changed since is an error: migrations are append-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from esper.urza.errors import Unavailable

log = logging.getLogger(__name__)

SCHEMA = "urza"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary but fixed advisory-lock keys ("URZA" in ASCII, then a sub-key per purpose).
MIGRATION_LOCK_KEY = 0x55525A41_0001
SEED_LOCK_KEY = 0x55525A41_0002
# Catalogue events take this transaction lock so revisions commit in revision order.
CATALOG_EVENT_LOCK_KEY = 0x55525A41_0003
# Pool bounds: a catalogue server does short queries; a few connections keep up on 2 cores.
# No floor: connections are opened on demand, so during an outage the pool does not keep
# retrying (and logging tracebacks) in the background; the next RPC reconnects.
POOL_MIN_SIZE = 0
POOL_MAX_SIZE = 10

SCHEMA_MIGRATIONS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

# What a lost or refused database connection looks like from asyncpg.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.CrashShutdownError,
)


class MigrationError(RuntimeError):
    """The migration files or the recorded history are inconsistent."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of `directory`, in version order; refuses gaps and strays."""
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = MIGRATION_FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {migration.version:04d})")
    return found


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the pending migrations on `conn`; returns the versions applied now."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(SCHEMA_MIGRATIONS_DDL)
        recorded = {r["version"]: r["checksum"] for r in
                    await conn.fetch(f"SELECT version, checksum FROM {SCHEMA}.schema_migrations")}
        applied: list[int] = []
        for migration in migrations:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead")
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {SCHEMA}")
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum)
            log.info("applied migration", extra={"migration": f"{migration.version:04d}_{migration.name}"})
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def _init_connection(conn: asyncpg.Connection) -> None:
    """JSONB columns in and out as Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, timeout_s: float, command_timeout_s: float) -> asyncpg.Pool:
    """A pool whose connects and queries give up after short timeouts, so an outage turns
    into a quick UNAVAILABLE rather than a hung RPC."""
    return await asyncpg.create_pool(
        dsn,
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        timeout=timeout_s,
        command_timeout=command_timeout_s,
        init=_init_connection,
        server_settings={"search_path": SCHEMA},
    )


class Database:
    """The pool plus the timeouts every use applies; `acquire`/`transaction` translate
    connection failures into `Unavailable`."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        with translate_errors():
            async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        with translate_errors():
            async with self.pool.acquire(timeout=self.acquire_timeout_s) as conn, conn.transaction():
                yield conn

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), self.acquire_timeout_s)
        except (TimeoutError, *CONNECTION_ERRORS):
            self.pool.terminate()


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except asyncpg.DataError:
        raise  # a value asyncpg cannot encode: a bug or an unchecked input, not an outage
    except CONNECTION_ERRORS as exc:
        raise Unavailable(f"postgres: database unavailable: {type(exc).__name__}: {exc}") from exc
