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
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg

from esper.runtime import postgres
from esper.runtime.postgres import CONNECTION_ERRORS, Migration, MigrationError, MigrationLedger
from esper.urza.errors import Unavailable

__all__ = ["CONNECTION_ERRORS", "Database", "Migration", "MigrationError", "apply_migrations",
           "create_pool", "load_migrations", "translate_errors"]

SCHEMA = "urza"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
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

# Urza's ledger of applied migrations (its name and columns are what existing databases hold).
MIGRATION_LEDGER = MigrationLedger(table=f"{SCHEMA}.schema_migrations", lock_key=MIGRATION_LOCK_KEY,
                                   schema=SCHEMA, search_path=SCHEMA)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of `directory`, in version order; refuses gaps and strays."""
    return postgres.load_migrations(directory)


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply the pending migrations on `conn`; returns the versions applied now."""
    migrations = load_migrations() if migrations is None else migrations
    return await postgres.apply_migrations(conn, migrations, MIGRATION_LEDGER)


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
