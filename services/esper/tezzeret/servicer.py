"""The TezzeretService gRPC servicer: validates requests, translates them to job-store and
Urza calls, and maps domain errors to statuses (INVALID_ARGUMENT naming the field,
NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE when a dependency is down)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from contextlib import asynccontextmanager
from datetime import datetime

import grpc

from esper.leyline.v1 import blueprint_pb2, tezzeret_pb2, tezzeret_pb2_grpc
from esper.tezzeret import submission
from esper.tezzeret.errors import DB_CONNECTION_ERRORS, DependencyUnavailable, InvalidSubmission
from esper.tezzeret.events import CompileEvents
from esper.tezzeret.jobs import (
    JobEvent,
    JobFinished,
    JobNotFound,
    JobStore,
    stage_from_proto,
    stage_to_proto,
)
from esper.tezzeret.requests import RequestPublisher
from esper.tezzeret.urza_client import UrzaClient, UrzaRefused
from esper.tezzeret.watch import JobWatchHub

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^j-[0-9a-f]{32}$")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Longest page token accepted: ours are ~80 characters.
MAX_PAGE_TOKEN_LENGTH = 512
# Blueprint states that take no new compile jobs.
CLOSED_STATES = (blueprint_pb2.BLUEPRINT_STATE_REJECTED, blueprint_pb2.BLUEPRINT_STATE_RETIRED)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode_page_token(created_at: datetime, job_id: str) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "id": job_id}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, str]:
    bad = _Abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token: not a token from a ListJobs response")
    if len(token) > MAX_PAGE_TOKEN_LENGTH:
        raise bad
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        created_at, job_id = datetime.fromisoformat(doc["t"]), doc["id"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise bad from None
    if created_at.tzinfo is None or not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise bad
    return created_at, job_id


def check_job_id(job_id: str) -> str:
    if not job_id:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: is required")
    if not JOB_ID_RE.match(job_id):
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                     f"job_id: {job_id[:80]!r} is not a job id (j-<32 hex digits>)")
    return job_id


class TezzeretServicer(tezzeret_pb2_grpc.TezzeretServiceServicer):
    def __init__(self, store: JobStore, publisher: RequestPublisher, urza: UrzaClient,
                 events: CompileEvents, hub: JobWatchHub, timeout_s: float) -> None:
        self.store = store
        self.publisher = publisher
        self.urza = urza
        self.events = events
        self.hub = hub
        self.timeout_s = timeout_s

    @asynccontextmanager
    async def _errors(self, context: grpc.aio.ServicerContext):
        """Translate domain errors raised inside the block into gRPC statuses."""
        try:
            yield
        except _Abort as exc:
            await context.abort(exc.code, exc.message)
        except InvalidSubmission as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except JobNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: no job {exc.args[0]}")
        except JobFinished as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except UrzaRefused as exc:
            await context.abort(exc.code, f"Urza: {exc.details}")
        except DependencyUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except DB_CONNECTION_ERRORS as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"postgres_dsn: job database unavailable: {type(exc).__name__}")

    async def _db(self, coro):
        """A job-store call bounded by the dependency timeout (an outage answers quickly)."""
        return await asyncio.wait_for(coro, self.timeout_s)

    # ---- SubmitCompile ---------------------------------------------------------------

    async def SubmitCompile(self, request, context):
        async with self._errors(context):
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
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"blueprint_ref: {ref} is {blueprint_pb2.BlueprintState.Name(record.state)}"
                         f"{': ' + record.reason if record.reason else ''}")
        return record.spec, ref, record.graph_digest, targets

    # ---- GetJob / ListJobs / CancelJob -----------------------------------------------

    async def GetJob(self, request, context):
        async with self._errors(context):
            job = await self._db(self.store.get(check_job_id(request.job_id)))
            return tezzeret_pb2.GetJobResponse(job=job.to_proto())

    async def ListJobs(self, request, context):
        async with self._errors(context):
            ref = submission.check_ref(request.blueprint_ref) if request.blueprint_ref else ""
            stage = ""
            if request.stage:
                try:
                    stage = stage_from_proto(request.stage)
                except ValueError:
                    raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"stage: {request.stage} is not a compile stage") from None
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            after = decode_page_token(request.page_token) if request.page_token else None
            page = await self._db(self.store.list(blueprint_ref=ref, stage=stage,
                                                  limit=size + 1, after=after))
            token = ""
            if len(page) > size:
                page = page[:size]
                token = encode_page_token(page[-1].created_at, page[-1].job_id)
            return tezzeret_pb2.ListJobsResponse(jobs=[j.to_proto() for j in page],
                                                 next_page_token=token)

    async def CancelJob(self, request, context):
        async with self._errors(context):
            job = await self._db(self.store.cancel(check_job_id(request.job_id)))
            self.events.job_changed(job)
            return tezzeret_pb2.CancelJobResponse(job=job.to_proto())

    # ---- WatchJob --------------------------------------------------------------------

    async def WatchJob(self, request, context):
        async with self._errors(context):
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
