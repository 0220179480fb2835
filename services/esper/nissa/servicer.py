"""NissaService over gRPC: validates, calls the queries, maps errors to statuses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import grpc

from esper.leyline.v1 import nissa_pb2, nissa_pb2_grpc
from esper.nissa import queries, validate
from esper.nissa.hub import EventFilter, EventHub
from esper.nissa.ingest import DB_ERRORS
from esper.nissa.validate import InvalidArgument
from esper.oona.aio import within

log = logging.getLogger(__name__)
T = TypeVar("T")
# A streaming subscriber re-checks for cancellation at least this often.
STREAM_POLL_S = 1.0


class NissaServicer(nissa_pb2_grpc.NissaServiceServicer):
    def __init__(self, pool: asyncpg.Pool, hub: EventHub) -> None:
        self.pool = pool
        self.hub = hub

    async def _call(
        self, context: grpc.aio.ServicerContext, work: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        try:
            async with self.pool.acquire() as conn:
                return await work(conn)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DB_ERRORS as exc:
            log.warning("nissa: database unavailable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "history database unavailable")
        raise AssertionError("unreachable")

    async def ListRuns(self, request, context):
        try:
            limit = validate.page_size(request.page_size)
            offset = validate.page_offset(request.page_token)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        runs = await self._call(context, lambda c: queries.list_runs(c, limit, offset))
        return nissa_pb2.ListRunsResponse(
            runs=runs, next_page_token=validate.next_token(offset, limit, len(runs))
        )

    async def GetRunSummary(self, request, context):
        try:
            run_id = validate.identifier("run_id", request.run_id, required=True)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        summary = await self._call(context, lambda c: queries.run_summary(c, run_id))
        if summary is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"run_id: no run {run_id!r}")
        return summary

    async def StreamEvents(self, request, context) -> AsyncIterator[nissa_pb2.StreamEventsResponse]:
        try:
            event_filter = EventFilter(
                run_id=validate.identifier("run_id", request.run_id, required=False),
                kinds=validate.kinds(list(request.kinds)),
                min_severity=validate.severity("min_severity", request.min_severity),
            )
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        subscription = self.hub.subscribe(event_filter)
        try:
            while not context.done():
                try:
                    event = await within(STREAM_POLL_S, subscription.queue.get())
                except TimeoutError:
                    continue
                yield nissa_pb2.StreamEventsResponse(event=event)
        finally:
            self.hub.unsubscribe(subscription)

    async def ListAlerts(self, request, context):
        try:
            run_id = validate.identifier("run_id", request.run_id, required=False)
            min_severity = validate.severity("min_severity", request.min_severity)
            limit = validate.page_size(request.page_size)
            offset = validate.page_offset(request.page_token)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        alerts = await self._call(
            context,
            lambda c: queries.list_alerts(
                c,
                run_id=run_id,
                min_severity=min_severity,
                include_acknowledged=request.include_acknowledged,
                limit=limit,
                offset=offset,
            ),
        )
        return nissa_pb2.ListAlertsResponse(
            alerts=alerts, next_page_token=validate.next_token(offset, limit, len(alerts))
        )

    async def AcknowledgeAlert(self, request, context):
        try:
            alert_id = validate.identifier("alert_id", request.alert_id, required=True)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        alert = await self._call(context, lambda c: queries.acknowledge_alert(c, alert_id))
        if alert is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"alert_id: no alert {alert_id!r}")
        return nissa_pb2.AcknowledgeAlertResponse(alert=alert)
