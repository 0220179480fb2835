"""NissaService over gRPC: validates and calls the queries. Errors become statuses through
the runtime's one mapping (esper.runtime.errors); List RPCs page with the runtime's
keyset tokens (esper.runtime.pagination)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import grpc

from esper.leyline.v1 import nissa_pb2, nissa_pb2_grpc
from esper.nissa import listing, queries, validate
from esper.nissa.hub import EventFilter, EventHub
from esper.nissa.ingest import DB_ERRORS
from esper.oona.aio import within
from esper.runtime import pagination
from esper.runtime.errors import NotFound, ServiceError, Unavailable, serves_errors

log = logging.getLogger(__name__)
T = TypeVar("T")
# A streaming subscriber re-checks for cancellation at least this often.
STREAM_POLL_S = 1.0


def _translate(exc: BaseException) -> ServiceError | None:
    if isinstance(exc, DB_ERRORS):
        log.warning("nissa: database unavailable: %s", exc)
        return Unavailable("history database unavailable")
    return None


@serves_errors(translate=_translate)
class NissaServicer(nissa_pb2_grpc.NissaServiceServicer):
    def __init__(self, pool: asyncpg.Pool, hub: EventHub) -> None:
        self.pool = pool
        self.hub = hub

    async def _call(
        self, context: grpc.aio.ServicerContext, work: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run `work` on a pooled connection (a lost database answers UNAVAILABLE)."""
        async with self.pool.acquire() as conn:
            return await work(conn)

    async def ListRuns(self, request, context):
        limit = validate.page_size(request.page_size)
        after = pagination.decode("ListRuns", request.page_token, {}, (int,))
        rows = await self._call(context, lambda c: queries.list_runs(c, limit + 1, after))
        page, token = pagination.next_token("ListRuns", rows, limit, lambda row: row[0], {})
        return nissa_pb2.ListRunsResponse(runs=[run for _, run in page], next_page_token=token)

    async def GetRunSummary(self, request, context):
        run_id = validate.identifier("run_id", request.run_id, required=True)
        summary = await self._call(context, lambda c: queries.run_summary(c, run_id))
        if summary is None:
            raise NotFound(f"run_id: no run {run_id!r}")
        return summary

    async def StreamEvents(self, request, context) -> AsyncIterator[nissa_pb2.StreamEventsResponse]:
        event_filter = EventFilter(
            run_id=validate.identifier("run_id", request.run_id, required=False),
            kinds=validate.kinds(list(request.kinds)),
            min_severity=validate.severity("min_severity", request.min_severity),
        )
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
        run_id = validate.identifier("run_id", request.run_id, required=False)
        min_severity = validate.severity("min_severity", request.min_severity)
        limit = validate.page_size(request.page_size)
        filters = {"run_id": run_id, "min_severity": min_severity,
                   "include_acknowledged": request.include_acknowledged}
        after = pagination.decode("ListAlerts", request.page_token, filters, (dt.datetime, str))
        rows = await self._call(
            context,
            lambda c: queries.list_alerts(
                c,
                run_id=run_id,
                min_severity=min_severity,
                include_acknowledged=request.include_acknowledged,
                limit=limit + 1,
                after=after,
            ),
        )
        page, token = pagination.next_token("ListAlerts", rows, limit, lambda row: row[0], filters)
        return nissa_pb2.ListAlertsResponse(alerts=[a for _, a in page], next_page_token=token)

    async def ListEvents(self, request, context):
        query = listing.parse_request(request.run_id, request.kinds, request.page_size,
                                      request.page_token)
        events, token = await self._call(context, lambda c: listing.list_events(c, query))
        return nissa_pb2.ListEventsResponse(events=events, next_page_token=token)

    async def AcknowledgeAlert(self, request, context):
        alert_id = validate.identifier("alert_id", request.alert_id, required=True)
        alert = await self._call(context, lambda c: queries.acknowledge_alert(c, alert_id))
        if alert is None:
            raise NotFound(f"alert_id: no alert {alert_id!r}")
        return nissa_pb2.AcknowledgeAlertResponse(alert=alert)
