"""The TezzeretService gRPC servicer: validates requests and translates them to job-store
and Urza calls. Domain errors become statuses through the runtime's one mapping
(esper.runtime.errors: INVALID_ARGUMENT naming the field, NOT_FOUND, FAILED_PRECONDITION);
a lost job database is UNAVAILABLE, and Urza's refusals keep their status."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from esper.leyline import ids
from esper.leyline.v1 import blueprint_pb2, tezzeret_pb2, tezzeret_pb2_grpc
from esper.runtime import pagination
from esper.runtime.auth import caller
from esper.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
    StatusError,
    Unavailable,
    serves_errors,
)
from esper.runtime.quota import RateQuota
from esper.tezzeret import submission
from esper.tezzeret.errors import DB_CONNECTION_ERRORS, InvalidSubmission
from esper.tezzeret.events import CompileEvents
from esper.tezzeret.jobs import JobEvent, JobStore, stage_from_proto, stage_to_proto
from esper.tezzeret.requests import RequestPublisher
from esper.tezzeret.urza_client import UrzaClient, UrzaRefused
from esper.tezzeret.watch import JobWatchHub

log = logging.getLogger(__name__)

# Blueprint states that take no new compile jobs.
CLOSED_STATES = (blueprint_pb2.BLUEPRINT_STATE_REJECTED, blueprint_pb2.BLUEPRINT_STATE_RETIRED)


def _translate(exc: BaseException) -> ServiceError | None:
    """What Tezzeret's dependencies raise, as the status a client sees."""
    if isinstance(exc, UrzaRefused):
        return StatusError(exc.code, f"Urza: {exc.details}")
    if isinstance(exc, DB_CONNECTION_ERRORS):
        return Unavailable(f"postgres_dsn: job database unavailable: {type(exc).__name__}")
    return None


def check_job_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id", "is required")
    if not ids.JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidArgument("job_id", f"{job_id[:80]!r} is not a job id (j-<32 hex digits>)")
    return job_id


@serves_errors(translate=_translate)
class TezzeretServicer(tezzeret_pb2_grpc.TezzeretServiceServicer):
    def __init__(self, store: JobStore, publisher: RequestPublisher, urza: UrzaClient,
                 events: CompileEvents, hub: JobWatchHub, timeout_s: float,
                 compile_quota: RateQuota | None = None) -> None:
        # Submissions per identity (esper.runtime.auth): one client cannot flood the queue.
        self.compile_quota = compile_quota
        self.store = store
        self.publisher = publisher
        self.urza = urza
        self.events = events
        self.hub = hub
        self.timeout_s = timeout_s

    async def _db(self, coro):
        """A job-store call bounded by the dependency timeout (an outage answers quickly)."""
        return await asyncio.wait_for(coro, self.timeout_s)

    # ---- SubmitCompile ---------------------------------------------------------------

    async def SubmitCompile(self, request, context):
        if self.compile_quota is not None:
            self.compile_quota.take(caller())  # RESOURCE_EXHAUSTED, before any work
        spec, ref, digest, targets = await self._resolve_submission(request)
        key = submission.request_key(ref, digest, targets)
        job, created = await self._db(self.store.submit(ref, key, targets))
        if created:
            self.events.job_changed(job)
            sent = await self.publisher.publish([job])
            if sent:
                await self._db(self.store.mark_published(sent))
        return tezzeret_pb2.SubmitCompileResponse(job=job.to_proto())

    async def _resolve_submission(self, request):
        has_inline, has_ref = request.HasField("blueprint"), bool(request.blueprint_ref)
        if has_inline and has_ref:
            raise InvalidSubmission("blueprint_ref", "give either blueprint or blueprint_ref, not both")
        if not has_inline and not has_ref:
            raise InvalidSubmission("blueprint", "a blueprint or a blueprint_ref is required")
        if has_inline:
            ref = submission.check_inline_blueprint(request.blueprint)
            targets = submission.check_targets(request.blueprint, request.targets)
            await self._db(self.store.pool.fetchval("SELECT 1"))  # fail before writing to Urza
            record, _ = await self.urza.create_blueprint(request.blueprint)
        else:
            ref = submission.check_ref(request.blueprint_ref)
            record = await self.urza.get_blueprint(ref)
            targets = submission.check_targets(record.spec, request.targets)
        if record.state in CLOSED_STATES:
            raise FailedPrecondition(f"blueprint_ref: {ref} is {blueprint_pb2.BlueprintState.Name(record.state)}"
                                     f"{': ' + record.reason if record.reason else ''}")
        return record.spec, ref, record.graph_digest, targets

    # ---- GetJob / ListJobs / CancelJob -----------------------------------------------

    async def GetJob(self, request, context):
        job = await self._db(self.store.get(check_job_id(request.job_id)))
        return tezzeret_pb2.GetJobResponse(job=job.to_proto())

    async def ListJobs(self, request, context):
        ref = submission.check_ref(request.blueprint_ref) if request.blueprint_ref else ""
        stage = ""
        if request.stage:
            try:
                stage = stage_from_proto(request.stage)
            except ValueError:
                raise InvalidArgument("stage", f"{request.stage} is not a compile stage") from None
        size = pagination.page_size(request.page_size)
        filters = {"blueprint_ref": ref, "stage": stage}
        after = pagination.decode("ListJobs", request.page_token, filters, (datetime, str))
        rows = await self._db(self.store.list(blueprint_ref=ref, stage=stage,
                                              limit=size + 1, after=after))
        page, token = pagination.next_token("ListJobs", rows, size,
                                            lambda job: (job.created_at, job.job_id), filters)
        return tezzeret_pb2.ListJobsResponse(jobs=[j.to_proto() for j in page],
                                             next_page_token=token)

    async def CancelJob(self, request, context):
        job = await self._db(self.store.cancel(check_job_id(request.job_id)))
        self.events.job_changed(job)
        return tezzeret_pb2.CancelJobResponse(job=job.to_proto())

    # ---- WatchJob --------------------------------------------------------------------

    async def WatchJob(self, request, context):
        job_id = check_job_id(request.job_id)
        await self._db(self.store.get(job_id))  # NOT_FOUND before the stream starts
        async for event in self.hub.events(job_id):
            job = await self._db(self.store.get(job_id))
            yield tezzeret_pb2.WatchJobResponse(job=_as_of(job.to_proto(), event))


def _as_of(job: tezzeret_pb2.CompileJob, event: JobEvent) -> tezzeret_pb2.CompileJob:
    """The job as of one of its events: its stage, detail and worker then."""
    job.stage = stage_to_proto(event.stage)
    job.detail = event.detail
    job.worker_id = event.worker_id
    job.updated_at.FromDatetime(event.created_at)
    return job
