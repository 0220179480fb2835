"""PostgreSQL for Nissa: the pool and versioned migrations.

Nissa's tables live in the `nissa` schema (the local stack shares one database between
services). Migrations are `migrations/NNNN_name.sql`, applied in order at start, each in
its own transaction with its row in `nissa.schema_migrations`, under an advisory lock so
two Nissa processes starting together never race (`esper.runtime.postgres` runs them).
Applied migrations are append-only: a changed file is an error.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from esper.runtime import postgres
from esper.runtime.postgres import Migration, MigrationError, MigrationLedger

__all__ = ["Migration", "MigrationError", "apply_migrations", "load_migrations", "open_database"]

SCHEMA = "nissa"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Fixed advisory-lock key ("NISA" in ASCII, sub-key 1: migrations).
MIGRATION_LOCK_KEY = 0x4E495341_0001
# Ingest holds one connection, queries a few more; 2 cores do not profit from more.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
# A query slower than this is a stuck database: fail the RPC instead of hanging it.
COMMAND_TIMEOUT_S = 30.0

# Nissa's ledger of applied migrations (its name and columns are what existing databases
# hold). The migrations name the schema of every table, so they keep the connection's
# search_path.
MIGRATION_LEDGER = MigrationLedger(table=f"{SCHEMA}.schema_migrations", lock_key=MIGRATION_LOCK_KEY,
                                   schema=SCHEMA)


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; refuses gaps and badly named files."""
    return postgres.load_migrations(directory)


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied now (idempotent)."""
    return await postgres.apply_migrations(conn, load_migrations(), MIGRATION_LEDGER)


async def open_database(dsn: str, connect_timeout_s: float) -> asyncpg.Pool:
    """A pool on `dsn` with the migrations applied."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        timeout=connect_timeout_s,
        command_timeout=COMMAND_TIMEOUT_S,
    )
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    return pool
