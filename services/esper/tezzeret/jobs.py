"""Compile jobs in PostgreSQL: the record of every job and its progress events.

Kafka only carries "job X is waiting"; everything a worker needs and everything a client
sees is here. Workers claim a job with a lease that they renew while they work, and every
change a worker makes is fenced on its claim, so a worker that lost its job (cancelled,
or taken over after its lease expired) can never overwrite the new owner's progress.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from google.protobuf import json_format

from esper.leyline.ids import new_job_id
from esper.leyline.v1 import kernel_pb2, telemetry_pb2, tezzeret_pb2
from esper.runtime import errors

# NOTIFY channel announcing "job <id> has a new event" to watchers in any process.
NOTIFY_CHANNEL = "tezzeret_job_events"

QUEUED, BUILDING, VALIDATING, CHARACTERISING, STORING = (
    "QUEUED", "BUILDING", "VALIDATING", "CHARACTERISING", "STORING")
REGISTERED, FAILED, CANCELLED = "REGISTERED", "FAILED", "CANCELLED"
TERMINAL = frozenset({REGISTERED, FAILED, CANCELLED})
STAGES = (QUEUED, BUILDING, VALIDATING, CHARACTERISING, STORING, REGISTERED, FAILED, CANCELLED)
_STAGE_PREFIX = "COMPILE_STAGE_"


def stage_to_proto(stage: str) -> int:
    return telemetry_pb2.CompileStage.Value(_STAGE_PREFIX + stage)


def stage_from_proto(value: int) -> str:
    """CompileStage enum value -> stage name; ValueError for UNSPECIFIED or unknown values."""
    name = telemetry_pb2.CompileStage.Name(value)  # ValueError when unknown
    stage = name.removeprefix(_STAGE_PREFIX)
    if stage not in STAGES:
        raise ValueError(f"{name} is not a job stage")
    return stage


class JobNotFound(errors.NotFound, LookupError):
    """No job has this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job_id: no job {job_id}")
        self.job_id = job_id


class JobFinished(errors.FailedPrecondition, RuntimeError):
    """The job already ended; it cannot be changed any more."""


@dataclass(frozen=True)
class Job:
    job_id: str
    blueprint_ref: str
    request_key: str
    targets: tuple[kernel_pb2.KernelTarget, ...]
    stage: str
    attempts: int
    worker_id: str
    lease_until: datetime | None
    detail: str
    kernel_ids: tuple[str, ...]
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.stage in TERMINAL

    def to_proto(self) -> tezzeret_pb2.CompileJob:
        job = tezzeret_pb2.CompileJob(
            job_id=self.job_id, blueprint_ref=self.blueprint_ref, targets=self.targets,
            stage=stage_to_proto(self.stage), detail=self.detail,
            kernel_ids=self.kernel_ids, worker_id=self.worker_id, attempts=self.attempts,
        )
        job.created_at.FromDatetime(self.created_at)
        job.updated_at.FromDatetime(self.updated_at)
        return job


@dataclass(frozen=True)
class JobEvent:
    event_id: int
    job_id: str
    stage: str
    detail: str
    kernel_id: str
    worker_id: str
    target_device: str
    created_at: datetime


@dataclass(frozen=True)
class Claim:
    """The outcome of a claim: the job as it is now and whether this worker holds it."""

    job: Job
    claimed: bool


def targets_to_json(targets: Sequence[kernel_pb2.KernelTarget]) -> str:
    return json.dumps([json_format.MessageToDict(t) for t in targets], sort_keys=True)


def _targets_from_json(raw: str) -> tuple[kernel_pb2.KernelTarget, ...]:
    return tuple(json_format.ParseDict(d, kernel_pb2.KernelTarget()) for d in json.loads(raw))


def _job(row: asyncpg.Record) -> Job:
    return Job(
        job_id=row["job_id"], blueprint_ref=row["blueprint_ref"], request_key=row["request_key"],
        targets=_targets_from_json(row["targets"]), stage=row["stage"], attempts=row["attempts"],
        worker_id=row["worker_id"], lease_until=row["lease_until"], detail=row["detail"],
        kernel_ids=tuple(row["kernel_ids"]), published_at=row["published_at"],
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _event(row: asyncpg.Record) -> JobEvent:
    return JobEvent(**{k: row[k] for k in JobEvent.__dataclass_fields__})


_OPEN = "stage NOT IN ('REGISTERED', 'FAILED', 'CANCELLED')"
# Jobs that count for idempotent resubmission (the partial unique index's condition).
_LIVE = "stage NOT IN ('FAILED', 'CANCELLED')"
# The live job of a request can fail between our insert and our read; retry that race.
SUBMIT_RETRIES = 3


class JobStore:
    """The compile_jobs / compile_job_events tables behind a pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ---- events ----------------------------------------------------------------------

    @staticmethod
    async def _add_event(conn, job: Job, *, kernel_id: str = "", target_device: str = "") -> None:
        await conn.execute(
            "INSERT INTO compile_job_events (job_id, stage, detail, kernel_id, worker_id,"
            " target_device) VALUES ($1, $2, $3, $4, $5, $6)",
            job.job_id, job.stage, job.detail, kernel_id, job.worker_id, target_device,
        )
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, job.job_id)

    async def events_after(self, job_id: str, after_event_id: int = 0) -> list[JobEvent]:
        rows = await self.pool.fetch(
            "SELECT * FROM compile_job_events WHERE job_id = $1 AND event_id > $2"
            " ORDER BY event_id", job_id, after_event_id,
        )
        return [_event(r) for r in rows]

    # ---- the submitter's side --------------------------------------------------------

    async def submit(self, blueprint_ref: str, request_key: str,
                     targets: Sequence[kernel_pb2.KernelTarget]) -> tuple[Job, bool]:
        """Store a QUEUED job; an equal live job (same request key) is returned instead,
        with created=False."""
        for _ in range(SUBMIT_RETRIES):
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "INSERT INTO compile_jobs (job_id, blueprint_ref, request_key, targets, stage)"
                    " VALUES ($1, $2, $3, $4::jsonb, 'QUEUED')"
                    f" ON CONFLICT (request_key) WHERE {_LIVE} DO NOTHING RETURNING *",
                    new_job_id(), blueprint_ref, request_key, targets_to_json(targets),
                )
                if row is not None:
                    job = _job(row)
                    await self._add_event(conn, job)
                    return job, True
                existing = await conn.fetchrow(
                    f"SELECT * FROM compile_jobs WHERE request_key = $1 AND {_LIVE}", request_key)
                if existing is not None:
                    return _job(existing), False
        raise RuntimeError(f"request {request_key}: live job kept changing, giving up")

    async def mark_published(self, job_ids: Sequence[str]) -> None:
        await self.pool.execute(
            "UPDATE compile_jobs SET published_at = now() WHERE job_id = ANY($1::text[])",
            list(job_ids))

    async def get(self, job_id: str) -> Job:
        row = await self.pool.fetchrow("SELECT * FROM compile_jobs WHERE job_id = $1", job_id)
        if row is None:
            raise JobNotFound(job_id)
        return _job(row)

    async def list(self, *, blueprint_ref: str = "", stage: str = "", limit: int = 50,
                   after: tuple[datetime, str] | None = None) -> list[Job]:
        """Newest first; `after` is the (created_at, job_id) of the last job of the
        previous page."""
        where, args = [], []
        if blueprint_ref:
            args.append(blueprint_ref)
            where.append(f"blueprint_ref = ${len(args)}")
        if stage:
            args.append(stage)
            where.append(f"stage = ${len(args)}")
        if after is not None:
            args.extend(after)
            where.append(f"(created_at, job_id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        sql = ("SELECT * FROM compile_jobs" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY created_at DESC, job_id DESC LIMIT ${len(args)}")
        return [_job(r) for r in await self.pool.fetch(sql, *args)]

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> Job:
        """End an unfinished job as CANCELLED (its worker notices at its next step)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE compile_jobs SET stage = 'CANCELLED', detail = $2, lease_until = NULL,"
                f" updated_at = now() WHERE job_id = $1 AND {_OPEN} RETURNING *", job_id, reason)
            if row is None:
                current = await conn.fetchrow("SELECT stage FROM compile_jobs WHERE job_id = $1",
                                              job_id)
                if current is None:
                    raise JobNotFound(job_id)
                raise JobFinished(f"job {job_id} already ended {current['stage']}")
            job = _job(row)
            await self._add_event(conn, job)
            return job

    async def stale(self, older_than_s: float, limit: int = 500) -> list[Job]:
        """Open jobs nobody holds whose request was last published `older_than_s` ago
        (or never): candidates for re-publishing."""
        rows = await self.pool.fetch(
            f"SELECT * FROM compile_jobs WHERE {_OPEN}"
            " AND (published_at IS NULL OR published_at < now() - make_interval(secs => $1))"
            " AND (lease_until IS NULL OR lease_until < now())"
            " ORDER BY created_at LIMIT $2", older_than_s, limit)
        return [_job(r) for r in rows]

    # ---- the worker's side -----------------------------------------------------------

    async def claim(self, job_id: str, worker_id: str, lease_s: float) -> Claim:
        """Take the job for `worker_id` unless it ended or another worker's lease is live."""
        row = await self.pool.fetchrow(
            f"UPDATE compile_jobs SET worker_id = $2, attempts = attempts + 1,"
            f" lease_until = now() + make_interval(secs => $3), updated_at = now()"
            f" WHERE job_id = $1 AND {_OPEN}"
            f" AND (worker_id = '' OR worker_id = $2 OR lease_until IS NULL OR lease_until < now())"
            f" RETURNING *", job_id, worker_id, lease_s)
        if row is not None:
            return Claim(_job(row), True)
        return Claim(await self.get(job_id), False)

    async def renew(self, job_id: str, worker_id: str, lease_s: float) -> bool:
        status = await self.pool.execute(
            f"UPDATE compile_jobs SET lease_until = now() + make_interval(secs => $3)"
            f" WHERE job_id = $1 AND worker_id = $2 AND {_OPEN}", job_id, worker_id, lease_s)
        return status.endswith(" 1")

    async def release(self, job_id: str, worker_id: str) -> None:
        """Give an unfinished job up (a worker stopping gracefully): others may take it now."""
        await self.pool.execute(
            f"UPDATE compile_jobs SET worker_id = '', lease_until = NULL, updated_at = now()"
            f" WHERE job_id = $1 AND worker_id = $2 AND {_OPEN}", job_id, worker_id)

    async def advance(self, job_id: str, worker_id: str, stage: str, detail: str = "", *,
                      kernel_id: str = "", target_device: str = "") -> Job | None:
        """Move a job this worker holds to `stage` (appending `kernel_id` when given) and
        record the event. None when the worker no longer holds it (cancelled, taken over)."""
        terminal = stage in TERMINAL
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"UPDATE compile_jobs SET stage = $3, detail = $4, updated_at = now(),"
                f" kernel_ids = CASE WHEN $5 = '' OR $5 = ANY(kernel_ids) THEN kernel_ids"
                f"   ELSE array_append(kernel_ids, $5) END,"
                f" lease_until = CASE WHEN $6 THEN NULL ELSE lease_until END"
                f" WHERE job_id = $1 AND worker_id = $2 AND {_OPEN} RETURNING *",
                job_id, worker_id, stage, detail, kernel_id, terminal)
            if row is None:
                return None
            job = _job(row)
            await self._add_event(conn, job, kernel_id=kernel_id, target_device=target_device)
            return job
