"""A compile worker: one member of the Kafka consumer group on `esper.compile.requests`.

Per request it claims the job in PostgreSQL (a lease it renews while it works), runs the
pipeline for every target, hands each artifact to Urza (UploadKernel: Urza verifies, stores
and registers the bytes), and only then commits the record's offset. A worker that dies mid-job commits
nothing, so the group redelivers the request to another worker, which takes the job over
once the dead worker's lease has expired. Redeliveries of finished jobs are skipped;
kernels are content-addressed, so a job done twice registers the same kernels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from esper.blueprints import BlueprintError
from esper.leyline.v1 import blueprint_pb2
from esper.oona import inflate
from esper.oona.consumer import HEARTBEAT_INTERVAL_MS, REBALANCE_TIMEOUT_MS, SESSION_TIMEOUT_MS
from esper.oona.envelope import DecodeError
from esper.oona.security import kafka_security
from esper.oona.topics import COMPILE_REQUESTS
from esper.tezzeret import jobs
from esper.tezzeret.errors import (
    DB_CONNECTION_ERRORS,
    DependencyUnavailable,
    JobAbandoned,
    ValidationFailed,
)
from esper.tezzeret.events import CompileEvents
from esper.tezzeret.jobs import Job, JobNotFound, JobStore
from esper.tezzeret.pipeline import PipelineSettings, build_kernel, describe_target, kernel_record
from esper.tezzeret.requests import decode_request
from esper.tezzeret.urza_client import UrzaClient, UrzaRefused

log = logging.getLogger(__name__)

# How long one poll waits for a request before looping (and noticing a stop).
POLL_TIMEOUT_MS = 500
# While another worker's lease on a job is live, re-check it this often.
LEASE_WAIT_S = 0.5
# Backoff while a dependency is down: retry soon, then at most this often.
OUTAGE_BACKOFF_MIN_S = 0.5
OUTAGE_BACKOFF_MAX_S = 10.0
# Renew the lease this many times per lease period, so one slow renewal never loses it.
RENEWALS_PER_LEASE = 3

ProgressHook = Callable[[Job], Awaitable[None]]


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class WorkerSettings:
    bootstrap: str
    group: str
    lease_s: float
    pipeline: PipelineSettings


class _Outage(Exception):
    """A dependency is down: retry the same request later, commit nothing."""


class CompileWorker:
    def __init__(self, settings: WorkerSettings, store: JobStore, urza: UrzaClient,
                 events: CompileEvents, *, worker_id: str | None = None,
                 progress_hook: ProgressHook | None = None) -> None:
        self.settings = settings
        self.store = store
        self.urza = urza
        self.events = events
        self.worker_id = worker_id or new_worker_id()
        # Called after every stage change this worker records (tests pause workers here).
        self.progress_hook = progress_hook
        self.jobs_done = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._current: str | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        inflate.install()  # a compression bomb on the request topic is refused, not inflated
        self._consumer = AIOKafkaConsumer(
            COMPILE_REQUESTS, bootstrap_servers=self.settings.bootstrap, **kafka_security(),
            group_id=self.settings.group, client_id=f"tezzeret-{self.worker_id}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS, metadata_max_age_ms=5_000,
            max_poll_records=1,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"tezzeret-worker-{self.worker_id}")

    async def stop(self) -> None:
        """Stop gracefully: give the current job back (others may take it at once) and
        leave the group without committing it."""
        current = self._current
        await self._halt()
        if current is not None:
            with contextlib.suppress(*DB_CONNECTION_ERRORS):
                await self.store.release(current, self.worker_id)

    async def kill(self) -> None:
        """Die as a crashed worker would: nothing committed, nothing released."""
        await self._halt()

    async def _halt(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await self._consumer.stop()
            self._consumer = None

    def assigned_partitions(self) -> set[TopicPartition]:
        """Partitions of the request topic this worker holds right now."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ---- the consume loop ------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        backoff = OUTAGE_BACKOFF_MIN_S
        while True:
            batches = await self._consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=1)
            for tp, records in batches.items():
                for record in records:
                    try:
                        await self._handle(record)
                    except _Outage as exc:
                        log.warning("tezzeret worker %s: %s; retrying in %.1fs",
                                    self.worker_id, exc, backoff)
                        self._consumer.seek(tp, record.offset)  # redeliver to ourselves
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, OUTAGE_BACKOFF_MAX_S)
                        break
                    backoff = OUTAGE_BACKOFF_MIN_S
                    await self._commit(tp, record.offset + 1)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self._consumer.commit({tp: offset})
        except (CommitFailedError, KafkaError) as exc:
            # The partition moved to another worker: it will see the job finished and skip.
            log.info("tezzeret worker %s: commit of %s@%d failed: %s", self.worker_id, tp, offset, exc)

    async def _handle(self, record) -> None:
        try:
            request = decode_request(record.value, record.headers)
        except DecodeError as exc:
            log.warning("tezzeret worker %s: skipping undecodable request at %s[%d]@%d: %s",
                        self.worker_id, record.topic, record.partition, record.offset, exc)
            return
        try:
            job = await self._claim(request.job_id)
            if job is None:
                return
            self._current = job.job_id
            try:
                await self._work(job)
            finally:
                self._current = None
        except DB_CONNECTION_ERRORS as exc:
            raise _Outage(f"postgres unavailable: {type(exc).__name__}: {exc}") from None
        except DependencyUnavailable as exc:
            raise _Outage(str(exc)) from None

    async def _claim(self, job_id: str) -> Job | None:
        """The job, held by this worker; None when it is unknown or already finished."""
        while True:
            try:
                claim = await self.store.claim(job_id, self.worker_id, self.settings.lease_s)
            except JobNotFound:
                log.warning("tezzeret worker %s: request for unknown job %s skipped",
                            self.worker_id, job_id)
                return None
            if claim.claimed:
                return claim.job
            if claim.job.finished:
                log.info("tezzeret worker %s: job %s already %s, skipping redelivery",
                         self.worker_id, job_id, claim.job.stage)
                return None
            await asyncio.sleep(LEASE_WAIT_S)  # another worker's lease is live

    # ---- one job ---------------------------------------------------------------------

    async def _work(self, job: Job) -> None:
        renewer = asyncio.create_task(self._renew(job.job_id))
        try:
            await self._compile(job)
            self.jobs_done += 1
        except JobAbandoned:
            log.info("tezzeret worker %s: job %s was cancelled or taken over", self.worker_id,
                     job.job_id)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, job_id: str) -> None:
        interval = self.settings.lease_s / RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(*DB_CONNECTION_ERRORS):
                if not await self.store.renew(job_id, self.worker_id, self.settings.lease_s):
                    return

    async def _advance(self, job: Job, stage: str, detail: str = "", *, kernel_id: str = "",
                       target_device: str = "") -> Job:
        updated = await self.store.advance(job.job_id, self.worker_id, stage, detail,
                                           kernel_id=kernel_id, target_device=target_device)
        if updated is None:
            raise JobAbandoned(job.job_id)
        self.events.job_changed(updated, kernel_id=kernel_id, target_device=target_device)
        if self.progress_hook is not None:
            await self.progress_hook(updated)
        return updated

    async def _compile(self, job: Job) -> None:
        try:
            record = await self.urza.get_blueprint(job.blueprint_ref)
        except UrzaRefused as exc:
            await self._advance(job, jobs.FAILED, f"blueprint {job.blueprint_ref}: {exc}")
            return
        await self._mark_compiling(record)
        kernel_ids: list[str] = []
        for target in job.targets:
            device = target.device
            try:
                kernel_ids.append(await self._compile_target(job, record.spec, target))
            except ValidationFailed as exc:
                await self._reject(job, exc, device)
                return
            except (BlueprintError, UrzaRefused) as exc:
                await self._advance(job, jobs.FAILED, f"{describe_target(target)}: {exc}",
                                    target_device=device)
                return
        await self._mark_characterised(job.blueprint_ref)
        await self._advance(job, jobs.REGISTERED, f"registered {len(kernel_ids)} kernel(s): "
                            + ", ".join(kernel_ids))

    async def _compile_target(self, job: Job, spec: blueprint_pb2.BlueprintSpec, target) -> str:
        async def on_stage(stage: str, detail: str) -> None:
            await self._advance(job, stage, detail, target_device=target.device)

        built = await build_kernel(spec, target, self.settings.pipeline, on_stage)
        await on_stage(jobs.STORING, f"storing {built.kernel_id} ({len(built.artifact)} bytes)")
        kernel, created = await self.urza.upload_kernel(kernel_record(job.blueprint_ref, built),
                                                        built.artifact)
        await self._advance(job, jobs.STORING, f"registered {kernel.kernel_id} for "
                            f"{describe_target(built.target)}"
                            + ("" if created else " (already registered)"),
                            kernel_id=kernel.kernel_id, target_device=target.device)
        return kernel.kernel_id

    async def _reject(self, job: Job, exc: ValidationFailed, device: str) -> None:
        reason = f"validation check {exc.check} failed: {exc.detail}"
        try:
            await self.urza.update_state(job.blueprint_ref, blueprint_pb2.BLUEPRINT_STATE_REJECTED,
                                         reason)
        except UrzaRefused as refused:
            log.warning("tezzeret: Urza refused to mark %s REJECTED: %s", job.blueprint_ref, refused)
        await self._advance(job, jobs.FAILED, reason, target_device=device)

    async def _mark_compiling(self, record: blueprint_pb2.BlueprintRecord) -> None:
        if record.state != blueprint_pb2.BLUEPRINT_STATE_SUBMITTED:
            return
        await self._set_state(record.spec.name + "@" + record.spec.version,
                              blueprint_pb2.BLUEPRINT_STATE_COMPILING)

    async def _mark_characterised(self, ref: str) -> None:
        """SUBMITTED/COMPILING -> VALIDATED -> CHARACTERISED; never demotes or revives."""
        state = (await self.urza.get_blueprint(ref)).state
        if state in (blueprint_pb2.BLUEPRINT_STATE_SUBMITTED, blueprint_pb2.BLUEPRINT_STATE_COMPILING):
            await self._set_state(ref, blueprint_pb2.BLUEPRINT_STATE_VALIDATED)
            state = blueprint_pb2.BLUEPRINT_STATE_VALIDATED
        if state == blueprint_pb2.BLUEPRINT_STATE_VALIDATED:
            await self._set_state(ref, blueprint_pb2.BLUEPRINT_STATE_CHARACTERISED)

    async def _set_state(self, ref: str, state: int) -> None:
        """Best effort: Urza may refuse a transition (e.g. the blueprint is already
        CHARACTERISED from an earlier job); that never fails the job."""
        try:
            await self.urza.update_state(ref, state, "tezzeret compile job")
        except UrzaRefused as exc:
            log.info("tezzeret: Urza kept %s's state (%s): %s", ref,
                     blueprint_pb2.BlueprintState.Name(state), exc.details)
