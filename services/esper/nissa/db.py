"""PostgreSQL for Nissa: the pool and versioned migrations.

Nissa's tables live in the `nissa` schema (the local stack shares one database between
services). Migrations are `migrations/NNNN_name.sql`, applied in order at start, each in
its own transaction with its row in `nissa.schema_migrations`, under an advisory lock so
two Nissa processes starting together never race. Applied migrations are append-only: a
changed file is an error.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

SCHEMA = "nissa"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Fixed advisory-lock key ("NISA" in ASCII, sub-key 1: migrations).
MIGRATION_LOCK_KEY = 0x4E495341_0001
# Ingest holds one connection, queries a few more; 2 cores do not profit from more.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 8
# A query slower than this is a stuck database: fail the RPC instead of hanging it.
COMMAND_TIMEOUT_S = 30.0

SCHEMA_MIGRATIONS_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


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
    """The migration files in version order; refuses gaps and badly named files."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing")
    return found


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied now (idempotent)."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(SCHEMA_MIGRATIONS_DDL)
        rows = await conn.fetch(f"SELECT version, checksum FROM {SCHEMA}.schema_migrations")
        recorded = {r["version"]: r["checksum"] for r in rows}
        applied: list[int] = []
        for migration in load_migrations():
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it "
                        "was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("nissa: applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


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
