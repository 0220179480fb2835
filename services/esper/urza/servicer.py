"""The UrzaService servicer: validates requests, calls the domain modules, and maps
domain errors onto gRPC status codes. No SQL or storage logic lives here."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from esper.leyline.v1 import urza_pb2, urza_pb2_grpc
from esper.urza import download, outcomes, search
from esper.urza.catalog import BlueprintQuery, Catalog
from esper.urza.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    UrzaError,
)
from esper.urza.events import CatalogFeed
from esper.urza.kernels import KernelQuery, KernelRegistry
from esper.urza.metrics import DEPENDENCY_UNAVAILABLE

log = logging.getLogger(__name__)

# Initial-metadata key of WatchCatalog: the revision the stream starts after.
REVISION_HEADER = "x-esper-catalog-revision"

STATUS_OF: dict[type[UrzaError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DataLoss: grpc.StatusCode.DATA_LOSS,
}


def status_of(exc: UrzaError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def unary(method: Callable) -> Callable:
    """Turn domain errors of a unary handler into the matching status."""
    @functools.wraps(method)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except UrzaError as exc:
            error = exc
        await _abort(context, method.__name__, error)
    return handler


def streaming(method: Callable) -> Callable:
    """Same for server-streaming handlers (async generators)."""
    @functools.wraps(method)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        try:
            async for response in method(self, request, context):
                yield response
            return
        except UrzaError as exc:
            error = exc
        await _abort(context, method.__name__, error)
    return handler


async def _abort(context: grpc.aio.ServicerContext, rpc: str, error: UrzaError) -> None:
    code = status_of(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        DEPENDENCY_UNAVAILABLE.labels(rpc).inc()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS):
        log.warning("%s failed: %s", rpc, error, extra={"rpc": rpc, "code": code.name})
    await context.abort(code, str(error))


class UrzaServicer(urza_pb2_grpc.UrzaServiceServicer):
    def __init__(self, catalog: Catalog, kernels: KernelRegistry, feed: CatalogFeed) -> None:
        self.catalog = catalog
        self.kernels = kernels
        self.feed = feed

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
        record = await outcomes.record_field_report(self.kernels.db, request.report)
        return urza_pb2.RecordFieldReportResponse(blueprint=record)
