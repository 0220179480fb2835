"""Tezzeret's database schema as versioned migrations, applied at start.

Each migration runs once, in order, inside a transaction, and is recorded in
`tezzeret_schema_migrations`; an advisory lock makes concurrent starts (a server and
standalone workers) safe. Never edit an applied migration: add a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Arbitrary but fixed key of the advisory lock serialising migrations across processes.
MIGRATION_LOCK_KEY = 0x7E2_2E7


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_STAGES = "('QUEUED','BUILDING','VALIDATING','CHARACTERISING','STORING','REGISTERED','FAILED','CANCELLED')"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "compile jobs and their events", f"""
CREATE TABLE compile_jobs (
    job_id          text PRIMARY KEY,
    blueprint_ref   text NOT NULL,
    -- SHA-256 over the blueprint ref, graph digest and targets: equal submissions share it.
    request_key     text NOT NULL,
    targets         jsonb NOT NULL,
    stage           text NOT NULL CHECK (stage IN {_STAGES}),
    attempts        integer NOT NULL DEFAULT 0,
    worker_id       text NOT NULL DEFAULT '',
    lease_until     timestamptz,
    detail          text NOT NULL DEFAULT '',
    kernel_ids      text[] NOT NULL DEFAULT '{{}}',
    published_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- At most one live (not failed, not cancelled) job per distinct request: resubmission is idempotent.
CREATE UNIQUE INDEX compile_jobs_live_request
    ON compile_jobs (request_key) WHERE stage NOT IN ('FAILED', 'CANCELLED');
CREATE INDEX compile_jobs_newest ON compile_jobs (created_at DESC, job_id DESC);
CREATE INDEX compile_jobs_blueprint ON compile_jobs (blueprint_ref, created_at DESC);
CREATE INDEX compile_jobs_open ON compile_jobs (stage, published_at)
    WHERE stage NOT IN ('REGISTERED', 'FAILED', 'CANCELLED');

CREATE TABLE compile_job_events (
    event_id        bigserial PRIMARY KEY,
    job_id          text NOT NULL REFERENCES compile_jobs (job_id) ON DELETE CASCADE,
    stage           text NOT NULL CHECK (stage IN {_STAGES}),
    detail          text NOT NULL DEFAULT '',
    kernel_id       text NOT NULL DEFAULT '',
    worker_id       text NOT NULL DEFAULT '',
    target_device   text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX compile_job_events_job ON compile_job_events (job_id, event_id);
"""),
)


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations not applied yet; returns the versions applied now."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS tezzeret_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM tezzeret_schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO tezzeret_schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version, migration.name,
                )
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
