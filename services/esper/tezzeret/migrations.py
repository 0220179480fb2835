"""Tezzeret's database schema as versioned migrations, applied at start.

Each migration runs once, in order, inside a transaction, and is recorded in
`tezzeret_schema_migrations`; an advisory lock makes concurrent starts (a server and
standalone workers) safe (`esper.runtime.postgres` runs them). Never edit an applied
migration: add a new one.
"""

from __future__ import annotations

import asyncpg

from esper.runtime import postgres
from esper.runtime.postgres import Migration, MigrationLedger

# Arbitrary but fixed key of the advisory lock serialising migrations across processes.
MIGRATION_LOCK_KEY = 0x7E2_2E7
# Tezzeret's ledger: a table in the search_path without checksums (what existing databases
# hold; its migrations are in this file, reviewed as code).
MIGRATION_LEDGER = MigrationLedger(table="tezzeret_schema_migrations", lock_key=MIGRATION_LOCK_KEY,
                                   checksums=False)

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
    return await postgres.apply_migrations(conn, MIGRATIONS, MIGRATION_LEDGER)
