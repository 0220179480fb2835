"""One typed async client per Esper service — the only place that builds a Leyline stub.

    async with UrzaClient("127.0.0.1:50051") as urza:
        record = await urza.get_blueprint("BP-MLP-GELU@1.0.0")
        async for kernel in urza.list_kernels(ListKernelsRequest(device="cpu")):
            ...

Each client holds one channel from `open_channel` (TLS, token, keepalive, retries) and its
stub; every call has a deadline (the client's `timeout_s` unless the call passes its own;
streams that follow live changes have none); `list_*` methods are async iterators over
every page (`limit` stops early); and every failed call raises `ServiceError` (service,
address, status code, details; `.unreachable` for UNAVAILABLE / DEADLINE_EXCEEDED), never
`grpc.RpcError`. A synchronous caller drives a client with `asyncio.run` (a channel belongs
to the event loop it was made on: make the client inside the coroutine).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any, ClassVar, Self

import grpc

from esper.leyline.v1 import (
    blueprint_pb2,
    kernel_pb2,
    nissa_pb2,
    nissa_pb2_grpc,
    tamiyo_pb2,
    tamiyo_pb2_grpc,
    telemetry_pb2,
    tezzeret_pb2,
    tezzeret_pb2_grpc,
    urza_pb2,
    urza_pb2_grpc,
)
from esper.rpc.channels import ChannelSecurity, open_channel
from esper.rpc.errors import ServiceError
from esper.rpc.metadata import UPLOAD_ACCEPTED

# Seconds a unary call waits unless the client or the call says otherwise.
DEFAULT_TIMEOUT_S = 10.0
# Items asked per page when a list request leaves page_size at 0 (every server's cap).
PAGE_SIZE = 1000
# Bytes per message of a kernel download or upload: few messages, far under the limit.
KERNEL_CHUNK_BYTES = 1 << 20
# A kernel upload's deadline grows with its size at this rate beyond the plain timeout.
UPLOAD_BYTES_PER_S = 8 * 1024 * 1024


class ServiceClient:
    """What every client shares: the channel, the stub, deadlines, paging, the error."""

    service: ClassVar[str] = ""

    def __init__(self, address: str, *, security: ChannelSecurity | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, own_connection: bool = False) -> None:
        """`own_connection`: not shared with this process's other channels (open_channel)."""
        self.address = address
        self.timeout_s = timeout_s
        self._channel = open_channel(address, security=security, own_connection=own_connection)
        self._stub = self._make_stub(self._channel)

    def _make_stub(self, channel: grpc.aio.Channel) -> Any:
        raise NotImplementedError

    @property
    def stub(self) -> Any:
        """The raw stub on this client's channel, for tests of a server's wire behaviour
        (exact statuses, page tokens). Callers use the methods: they translate errors."""
        return self._stub

    @property
    def channel(self) -> grpc.aio.Channel:
        """The client's channel (for raw calls, e.g. tests sending malformed bytes)."""
        return self._channel

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def _error(self, exc: grpc.RpcError) -> ServiceError:
        return ServiceError.from_rpc(self.service, self.address, exc)

    async def _unary(self, method, request, timeout_s: float | None = None):
        try:
            return await method(request, timeout=self.timeout_s if timeout_s is None else timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    async def _stream(self, method, request, timeout_s: float | None = None) -> AsyncIterator:
        """A server stream's messages; `timeout_s` None means no deadline."""
        call = method(request, timeout=timeout_s)
        try:
            async for message in call:
                yield message
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    async def _pages(self, method, request, field: str, limit: int | None,
                     timeout_s: float | None) -> AsyncIterator:
        """Every item of a List RPC, page after page (at most `limit`), each page one call
        with the deadline. The request is copied, never changed."""
        paged = type(request)()
        paged.CopyFrom(request)
        page_size = paged.page_size or PAGE_SIZE
        given = 0
        while limit is None or given < limit:
            paged.page_size = page_size if limit is None else min(page_size, limit - given)
            page = await self._unary(method, paged, timeout_s)
            for item in getattr(page, field):
                yield item
                given += 1
                if limit is not None and given >= limit:
                    return
            if not page.next_page_token:
                return
            paged.page_token = page.next_page_token


class UrzaClient(ServiceClient):
    """Urza: the blueprint catalogue and the kernel library."""

    service = "Urza"

    def _make_stub(self, channel):
        return urza_pb2_grpc.UrzaServiceStub(channel)

    async def create_blueprint(self, spec: blueprint_pb2.BlueprintSpec, *, timeout_s: float | None = None
                               ) -> tuple[blueprint_pb2.BlueprintRecord, bool]:
        """(the record, whether it was created now)."""
        response = await self._unary(self._stub.CreateBlueprint,
                                     urza_pb2.CreateBlueprintRequest(spec=spec), timeout_s)
        return response.blueprint, response.created

    async def get_blueprint(self, ref: str, *, timeout_s: float | None = None
                            ) -> blueprint_pb2.BlueprintRecord:
        response = await self._unary(self._stub.GetBlueprint,
                                     urza_pb2.GetBlueprintRequest(blueprint_ref=ref), timeout_s)
        return response.blueprint

    def list_blueprints(self, request: urza_pb2.ListBlueprintsRequest | None = None, *,
                        limit: int | None = None, timeout_s: float | None = None
                        ) -> AsyncIterator[blueprint_pb2.BlueprintRecord]:
        return self._pages(self._stub.ListBlueprints, request or urza_pb2.ListBlueprintsRequest(),
                           "blueprints", limit, timeout_s)

    async def update_blueprint_state(self, ref: str, state: int, reason: str = "", *,
                                     timeout_s: float | None = None) -> blueprint_pb2.BlueprintRecord:
        response = await self._unary(self._stub.UpdateBlueprintState, urza_pb2.UpdateBlueprintStateRequest(
            blueprint_ref=ref, state=state, reason=reason), timeout_s)
        return response.blueprint

    async def retire_blueprint(self, ref: str, reason: str = "", *, timeout_s: float | None = None
                               ) -> blueprint_pb2.BlueprintRecord:
        response = await self._unary(self._stub.RetireBlueprint, urza_pb2.RetireBlueprintRequest(
            blueprint_ref=ref, reason=reason), timeout_s)
        return response.blueprint

    async def register_kernel(self, kernel: kernel_pb2.KernelArtifact, *, timeout_s: float | None = None
                              ) -> tuple[kernel_pb2.KernelArtifact, bool]:
        """Register an artifact whose bytes Urza already holds; (the stored one, created)."""
        response = await self._unary(self._stub.RegisterKernel,
                                     urza_pb2.RegisterKernelRequest(kernel=kernel), timeout_s)
        return response.kernel, response.created

    async def upload_kernel(self, kernel: kernel_pb2.KernelArtifact, data: bytes, *,
                            timeout_s: float | None = None) -> tuple[kernel_pb2.KernelArtifact, bool]:
        """Hand `data`, the bytes `kernel` describes (sha256, size_bytes), to Urza, which
        verifies, stores and registers them; (the stored artifact, created). The deadline
        grows with the size."""
        base = self.timeout_s if timeout_s is None else timeout_s
        call = self._stub.UploadKernel(timeout=base + len(data) / UPLOAD_BYTES_PER_S)
        try:
            response = await self._upload(call, kernel, data)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()  # a no-op once the call ended
        return response.kernel, response.created

    @staticmethod
    async def _upload(call, kernel: kernel_pb2.KernelArtifact, data: bytes) -> urza_pb2.UploadKernelResponse:
        """The metadata first, the bytes only once Urza accepted it (UPLOAD_ACCEPTED in the
        initial metadata). A refused upload thus has no bytes in flight: gRPC's asyncio client
        reports a send that fails because the server already ended the call as INTERNAL,
        hiding the status the server gave, and a large kernel is not sent only to be refused."""
        await call.write(urza_pb2.UploadKernelRequest(kernel=kernel))
        if UPLOAD_ACCEPTED in tuple(await call.initial_metadata() or ()):
            try:
                for start in range(0, len(data), KERNEL_CHUNK_BYTES):
                    await call.write(urza_pb2.UploadKernelRequest(chunk=data[start:start + KERNEL_CHUNK_BYTES]))
                await call.done_writing()
            except asyncio.InvalidStateError:
                pass  # the call ended while the bytes were going out: its status says why
        return await call

    async def get_kernel(self, kernel_id: str, *, timeout_s: float | None = None) -> kernel_pb2.KernelArtifact:
        response = await self._unary(self._stub.GetKernel, urza_pb2.GetKernelRequest(kernel_id=kernel_id),
                                     timeout_s)
        return response.kernel

    def list_kernels(self, request: urza_pb2.ListKernelsRequest | None = None, *,
                     limit: int | None = None, timeout_s: float | None = None
                     ) -> AsyncIterator[kernel_pb2.KernelArtifact]:
        return self._pages(self._stub.ListKernels, request or urza_pb2.ListKernelsRequest(),
                           "kernels", limit, timeout_s)

    async def search_kernels(self, request: urza_pb2.SearchKernelsRequest, *,
                             timeout_s: float | None = None) -> list[urza_pb2.KernelCandidate]:
        """Kernels that fit a slot and a budget, best first."""
        response = await self._unary(self._stub.SearchKernels, request, timeout_s)
        return list(response.candidates)

    async def download_kernel(self, kernel_id: str, *, chunk_bytes: int = KERNEL_CHUNK_BYTES,
                              timeout_s: float | None = None) -> bytes:
        """A kernel's bytes, reassembled from the stream in order and checked against the
        SHA-256 Urza sends (ValueError when chunks are out of order or the digest differs).
        `timeout_s` bounds the whole download."""
        chunks: list[bytes] = []
        size, expected = 0, ""
        request = urza_pb2.DownloadKernelRequest(kernel_id=kernel_id, chunk_size=chunk_bytes)
        stream = self._stream(self._stub.DownloadKernel, request,
                              self.timeout_s if timeout_s is None else timeout_s)
        try:
            async for part in stream:
                if part.offset != size:
                    raise ValueError(f"kernel {kernel_id}: chunk at offset {part.offset} out of order")
                chunks.append(part.data)
                size += len(part.data)
                expected = part.sha256 or expected
                if part.last:
                    break
        finally:
            await stream.aclose()
        data = b"".join(chunks)
        if expected and hashlib.sha256(data).hexdigest() != expected.lower():
            raise ValueError(f"kernel {kernel_id}: downloaded bytes do not match Urza's digest")
        return data

    def watch_catalog(self, after_revision: int = 0) -> AsyncIterator[urza_pb2.WatchCatalogResponse]:
        """Catalogue changes as they happen (no deadline; ends with a ServiceError)."""
        return self._stream(self._stub.WatchCatalog,
                            urza_pb2.WatchCatalogRequest(after_revision=after_revision))

    async def record_field_report(self, report: telemetry_pb2.FieldReport, *,
                                  timeout_s: float | None = None) -> blueprint_pb2.BlueprintRecord:
        response = await self._unary(self._stub.RecordFieldReport,
                                     urza_pb2.RecordFieldReportRequest(report=report), timeout_s)
        return response.blueprint


class TezzeretClient(ServiceClient):
    """Tezzeret: compile jobs."""

    service = "Tezzeret"

    def _make_stub(self, channel):
        return tezzeret_pb2_grpc.TezzeretServiceStub(channel)

    async def submit(self, blueprint_ref: str, targets: Iterable[kernel_pb2.KernelTarget], *,
                     blueprint: blueprint_pb2.BlueprintSpec | None = None,
                     timeout_s: float | None = None) -> tezzeret_pb2.CompileJob:
        """Queue a compile of `blueprint_ref` (or of an inline `blueprint`) for `targets`;
        the job (the live one when an equal request is queued already)."""
        request = tezzeret_pb2.SubmitCompileRequest(blueprint_ref=blueprint_ref, targets=list(targets))
        if blueprint is not None:
            request.blueprint.CopyFrom(blueprint)
        return (await self._unary(self._stub.SubmitCompile, request, timeout_s)).job

    async def get_job(self, job_id: str, *, timeout_s: float | None = None) -> tezzeret_pb2.CompileJob:
        return (await self._unary(self._stub.GetJob, tezzeret_pb2.GetJobRequest(job_id=job_id),
                                  timeout_s)).job

    def list_jobs(self, request: tezzeret_pb2.ListJobsRequest | None = None, *,
                  limit: int | None = None, timeout_s: float | None = None
                  ) -> AsyncIterator[tezzeret_pb2.CompileJob]:
        """Jobs, newest first."""
        return self._pages(self._stub.ListJobs, request or tezzeret_pb2.ListJobsRequest(), "jobs",
                           limit, timeout_s)

    async def watch_job(self, job_id: str) -> AsyncIterator[tezzeret_pb2.CompileJob]:
        """The job as it changes, until it ends (no deadline)."""
        async for update in self._stream(self._stub.WatchJob, tezzeret_pb2.WatchJobRequest(job_id=job_id)):
            yield update.job

    async def cancel(self, job_id: str, *, timeout_s: float | None = None) -> tezzeret_pb2.CompileJob:
        return (await self._unary(self._stub.CancelJob, tezzeret_pb2.CancelJobRequest(job_id=job_id),
                                  timeout_s)).job


class SessionStream:
    """Tamiyo's side of an open `Session`: iterate it for `SessionResponse`s (a failure is a
    ServiceError); `cancel()` ends it."""

    def __init__(self, client: TamiyoClient, call) -> None:
        self._client = client
        self._call = call
        self._iterator = call.__aiter__()

    def __aiter__(self) -> SessionStream:
        return self

    async def __anext__(self) -> tamiyo_pb2.SessionResponse:
        try:
            return await self._iterator.__anext__()
        except grpc.RpcError as exc:
            raise self._client._error(exc) from None

    async def read(self) -> tamiyo_pb2.SessionResponse:
        """The next response; StopAsyncIteration once Tamiyo has ended the stream."""
        return await self.__anext__()

    def cancel(self) -> bool:
        return self._call.cancel()


class TamiyoClient(ServiceClient):
    """Tamiyo: the controller's session stream and one-shot decisions."""

    service = "Tamiyo"

    def _make_stub(self, channel):
        return tamiyo_pb2_grpc.TamiyoServiceStub(channel)

    def session(self, requests: AsyncIterable[tamiyo_pb2.SessionRequest]) -> SessionStream:
        """Open the bidirectional Session stream (no deadline: it lives as long as the run)."""
        return SessionStream(self, self._stub.Session(requests))

    async def decide(self, request: tamiyo_pb2.DecideRequest, *, timeout_s: float | None = None
                     ) -> tamiyo_pb2.DecideResponse:
        return await self._unary(self._stub.Decide, request, timeout_s)

    async def list_policies(self, *, timeout_s: float | None = None) -> list[tamiyo_pb2.PolicyInfo]:
        response = await self._unary(self._stub.ListPolicies, tamiyo_pb2.ListPoliciesRequest(), timeout_s)
        return list(response.policies)

    async def reload_policy(self, name: str, artifact_path: str = "", *,
                            timeout_s: float | None = None) -> tamiyo_pb2.PolicyInfo:
        response = await self._unary(self._stub.ReloadPolicy, tamiyo_pb2.ReloadPolicyRequest(
            name=name, artifact_path=artifact_path), timeout_s)
        return response.policy


class NissaClient(ServiceClient):
    """Nissa: run history, events, alerts."""

    service = "Nissa"

    def _make_stub(self, channel):
        return nissa_pb2_grpc.NissaServiceStub(channel)

    def list_runs(self, request: nissa_pb2.ListRunsRequest | None = None, *, limit: int | None = None,
                  timeout_s: float | None = None) -> AsyncIterator[nissa_pb2.RunInfo]:
        """Runs, most recent first."""
        return self._pages(self._stub.ListRuns, request or nissa_pb2.ListRunsRequest(), "runs",
                           limit, timeout_s)

    async def get_run_summary(self, run_id: str, *, timeout_s: float | None = None
                              ) -> nissa_pb2.GetRunSummaryResponse:
        return await self._unary(self._stub.GetRunSummary, nissa_pb2.GetRunSummaryRequest(run_id=run_id),
                                 timeout_s)

    def list_events(self, request: nissa_pb2.ListEventsRequest | None = None, *,
                    limit: int | None = None, timeout_s: float | None = None
                    ) -> AsyncIterator[telemetry_pb2.TelemetryEvent]:
        """Stored events of a run (or of every run), by kind."""
        return self._pages(self._stub.ListEvents, request or nissa_pb2.ListEventsRequest(), "events",
                           limit, timeout_s)

    async def stream_events(self, request: nissa_pb2.StreamEventsRequest
                            ) -> AsyncIterator[telemetry_pb2.TelemetryEvent]:
        """Events as Nissa ingests them (no deadline)."""
        async for message in self._stream(self._stub.StreamEvents, request):
            yield message.event

    def list_alerts(self, request: nissa_pb2.ListAlertsRequest | None = None, *,
                    limit: int | None = None, timeout_s: float | None = None
                    ) -> AsyncIterator[telemetry_pb2.Alert]:
        return self._pages(self._stub.ListAlerts, request or nissa_pb2.ListAlertsRequest(), "alerts",
                           limit, timeout_s)

    async def acknowledge_alert(self, alert_id: str, *, timeout_s: float | None = None
                                ) -> telemetry_pb2.Alert:
        response = await self._unary(self._stub.AcknowledgeAlert,
                                     nissa_pb2.AcknowledgeAlertRequest(alert_id=alert_id), timeout_s)
        return response.alert
