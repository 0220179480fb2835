"""PostgreSQL plumbing every database-backed server shares: what a lost connection looks
like from asyncpg, and versioned migrations applied under an advisory lock.

Each service keeps its own migrations and its own ledger (the table recording which
migrations ran, in the service's schema, with the service's lock key); this module only
runs them. A migration runs once, in order, in its own transaction together with its row
in the ledger. Applied migrations are append-only: where the ledger records checksums, an
applied migration whose SQL changed since is an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

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

# A `password=...` parameter in a DSN's query string (libpq and asyncpg accept one there).
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&]*")
# What stands in for a redacted password.
REDACTED = "***"


def redact_dsn(dsn: str) -> str:
    """The DSN as it may appear in logs and error messages: without its password, whether
    it sits in the userinfo (`postgresql://user:secret@host/db`) or in the query string
    (`...?password=secret`)."""
    scheme, sep, rest = dsn.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":" + REDACTED
    return _QUERY_PASSWORD.sub(rf"\g<1>{REDACTED}", f"{scheme}{sep}{userinfo}{at}{host}")


# Migration files are `NNNN_name.sql`: a four-digit version, then a lower_snake name.
MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


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


@dataclass(frozen=True)
class MigrationLedger:
    """Where one service records its applied migrations, and how it serialises them."""

    # The ledger table, schema-qualified where the service has a schema.
    table: str
    # Key of the session advisory lock that serialises concurrent starts of the service.
    lock_key: int
    # Schema created before the ledger (None: the ledger lives in the search_path).
    schema: str | None = None
    # search_path set for each migration's transaction (None: the connection's own).
    search_path: str | None = None
    # Record a SHA-256 of each migration and refuse one whose SQL changed since.
    checksums: bool = True

    def ddl(self) -> str:
        checksum = "    checksum   text        NOT NULL,\n" if self.checksums else ""
        table = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (\n"
            "    version    integer     PRIMARY KEY,\n"
            "    name       text        NOT NULL,\n"
            f"{checksum}"
            "    applied_at timestamptz NOT NULL DEFAULT now()\n"
            ")"
        )
        return table if self.schema is None else f"CREATE SCHEMA IF NOT EXISTS {self.schema};\n{table}"


def load_migrations(directory: Path) -> list[Migration]:
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


async def apply_migrations(
    conn: asyncpg.Connection, migrations: Sequence[Migration], ledger: MigrationLedger
) -> list[int]:
    """Apply the migrations `ledger` does not record yet; returns the versions applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", ledger.lock_key)
    try:
        await conn.execute(ledger.ddl())
        recorded = await _recorded(conn, ledger)
        applied: list[int] = []
        for migration in migrations:
            if migration.version in recorded:
                _check_unchanged(migration, recorded[migration.version], ledger)
                continue
            await _apply_one(conn, migration, ledger)
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ledger.lock_key)


async def _recorded(conn: asyncpg.Connection, ledger: MigrationLedger) -> dict[int, str | None]:
    """The recorded versions, each with its checksum (None where the ledger keeps none)."""
    if ledger.checksums:
        rows = await conn.fetch(f"SELECT version, checksum FROM {ledger.table}")
        return {r["version"]: r["checksum"] for r in rows}
    return {r["version"]: None for r in await conn.fetch(f"SELECT version FROM {ledger.table}")}


def _check_unchanged(migration: Migration, checksum: str | None, ledger: MigrationLedger) -> None:
    if ledger.checksums and checksum != migration.checksum:
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} changed after it "
            "was applied; add a new migration instead")


async def _apply_one(conn: asyncpg.Connection, migration: Migration, ledger: MigrationLedger) -> None:
    async with conn.transaction():
        if ledger.search_path is not None:
            await conn.execute(f"SET LOCAL search_path TO {ledger.search_path}")
        await conn.execute(migration.sql)
        if ledger.checksums:
            await conn.execute(
                f"INSERT INTO {ledger.table} (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum)
        else:
            await conn.execute(
                f"INSERT INTO {ledger.table} (version, name) VALUES ($1, $2)",
                migration.version, migration.name)
    log.info("applied migration", extra={"migration": f"{migration.version:04d}_{migration.name}",
                                         "ledger": ledger.table})
