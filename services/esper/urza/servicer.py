"""The UrzaService servicer: validates requests and calls the domain modules; their domain
errors become gRPC statuses through the runtime's one mapping (esper.runtime.errors). No SQL
or storage logic lives here."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc

from esper.leyline.v1 import urza_pb2, urza_pb2_grpc
from esper.rpc.metadata import UPLOAD_ACCEPTED
from esper.runtime.auth import caller
from esper.runtime.errors import ServiceError, handle_errors, serves_errors
from esper.runtime.quota import RateQuota
from esper.urza import download, outcomes, search, upload
from esper.urza.catalog import BlueprintQuery, Catalog
from esper.urza.errors import InvalidArgument
from esper.urza.events import CatalogFeed
from esper.urza.kernels import KernelQuery, KernelRegistry
from esper.urza.metrics import DEPENDENCY_UNAVAILABLE

log = logging.getLogger(__name__)

# Initial-metadata key of WatchCatalog: the revision the stream starts after.
REVISION_HEADER = "x-esper-catalog-revision"

def _observe(rpc: str, error: ServiceError) -> None:
    """Count and log what says a dependency or the stored bytes failed."""
    code = error.code
    if code == grpc.StatusCode.UNAVAILABLE:
        DEPENDENCY_UNAVAILABLE.labels(rpc).inc()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.INTERNAL):
        log.warning("%s failed: %s", rpc, error, extra={"rpc": rpc, "code": code.name})


# Domain errors of a handler become their status (esper.runtime.errors); anything else INTERNAL.
unary = streaming = functools.partial(handle_errors, observe=_observe)


@serves_errors(observe=_observe)
class UrzaServicer(urza_pb2_grpc.UrzaServiceServicer):
    def __init__(self, catalog: Catalog, kernels: KernelRegistry, feed: CatalogFeed, *,
                 max_kernel_bytes: int = upload.DEFAULT_MAX_KERNEL_BYTES,
                 report_quota: RateQuota | None = None) -> None:
        # Field reports per identity (esper.runtime.auth): fake reports cannot flood the ranking.
        self.report_quota = report_quota
        self.catalog = catalog
        self.kernels = kernels
        self.feed = feed
        self.max_kernel_bytes = max_kernel_bytes
        # Uploads receiving bytes at once; more wait (made on first use, on the server's loop).
        self._upload_slots: asyncio.Semaphore | None = None

    @unary
    async def CreateBlueprint(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "is required")
        record, created = await self.catalog.create(request.spec)
        return urza_pb2.CreateBlueprintResponse(blueprint=record, created=created)

    @unary
    async def GetBlueprint(self, request, context):
        return urza_pb2.GetBlueprintResponse(blueprint=await self.catalog.get(request.blueprint_ref))

    @unary
    async def ListBlueprints(self, request, context):
        query = BlueprintQuery(family=request.family, tags=list(request.tags), state=request.state,
                               capabilities=list(request.capabilities), slot_kind=request.slot_kind)
        page, token = await self.catalog.list(query, request.page_size, request.page_token)
        return urza_pb2.ListBlueprintsResponse(blueprints=page, next_page_token=token)

    @unary
    async def RetireBlueprint(self, request, context):
        record = await self.catalog.retire(request.blueprint_ref, request.reason)
        return urza_pb2.RetireBlueprintResponse(blueprint=record)

    @unary
    async def UpdateBlueprintState(self, request, context):
        record = await self.catalog.update_state(request.blueprint_ref, request.state, request.reason)
        return urza_pb2.UpdateBlueprintStateResponse(blueprint=record)

    @unary
    async def RegisterKernel(self, request, context):
        if not request.HasField("kernel"):
            raise InvalidArgument("kernel", "is required")
        kernel, created = await self.kernels.register(request.kernel)
        return urza_pb2.RegisterKernelResponse(kernel=kernel, created=created)

    @unary
    async def UploadKernel(self, request_iterator, context):
        if self._upload_slots is None:
            self._upload_slots = asyncio.Semaphore(upload.MAX_CONCURRENT_UPLOADS)
        kernel, created = await upload.upload(self.kernels, request_iterator, self.max_kernel_bytes,
                                              slots=self._upload_slots, idle_s=upload.UPLOAD_IDLE_S,
                                              accept=lambda: context.send_initial_metadata(
                                                  (UPLOAD_ACCEPTED,)))
        return urza_pb2.UploadKernelResponse(kernel=kernel, created=created)

    @unary
    async def GetKernel(self, request, context):
        return urza_pb2.GetKernelResponse(kernel=await self.kernels.get(request.kernel_id))

    @unary
    async def ListKernels(self, request, context):
        query = KernelQuery(blueprint_ref=request.blueprint_ref, device=request.device,
                            state=request.state, channels=request.channels)
        page, token = await self.kernels.list(query, request.page_size, request.page_token)
        return urza_pb2.ListKernelsResponse(kernels=page, next_page_token=token)

    @unary
    async def SearchKernels(self, request, context):
        if not request.HasField("shape"):
            raise InvalidArgument("shape", "is required")
        candidates = await search.search_kernels(self.kernels.db, request)
        return urza_pb2.SearchKernelsResponse(candidates=candidates)

    @streaming
    async def DownloadKernel(self, request, context) -> AsyncIterator[urza_pb2.DownloadKernelResponse]:
        async for chunk in download.download(self.kernels, request.kernel_id, request.chunk_size):
            yield chunk

    @streaming
    async def WatchCatalog(self, request, context) -> AsyncIterator[urza_pb2.WatchCatalogResponse]:
        async def subscribed(cursor: int) -> None:
            # Headers tell the client it is subscribed, and from which revision on.
            await context.send_initial_metadata(((REVISION_HEADER, str(cursor)),))

        async for event in self.feed.watch(request.after_revision, subscribed):
            yield urza_pb2.WatchCatalogResponse(event=event)

    @unary
    async def RecordFieldReport(self, request, context):
        if not request.HasField("report"):
            raise InvalidArgument("report", "is required")
        if self.report_quota is not None:
            self.report_quota.take(caller())
        record = await outcomes.record_field_report(self.kernels.db, request.report)
        return urza_pb2.RecordFieldReportResponse(blueprint=record)
