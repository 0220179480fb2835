"""ListEvents: stored events in pages that form one consistent listing.

Order: by run, then event time, then event id (the index `events_listing`). The first page
reads the database's current snapshot (`pg_current_snapshot()`); the page token carries it
with the last row's key, and every page shows only rows whose storing transaction
(`stored_by`, migration 0003) is visible in that snapshot. So a listing is exactly the
events stored when it began: an event stored meanwhile, whatever its run or time, is
neither skipped nor repeated, it belongs to the next listing. Rows stored before the
migration (NULL `stored_by`) are in every listing.

The token is the runtime's page token (esper.runtime.pagination): position (snapshot, run,
time, event id), bound to the request's run_id and kinds.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from esper.leyline.v1 import telemetry_pb2
from esper.nissa import validate
from esper.runtime import pagination
from esper.runtime.errors import InvalidArgument

SCOPE = "ListEvents"
# A page ends once it holds this many bytes of events (well under the 16 MiB message limit).
MAX_PAGE_BYTES = 4 * 1024 * 1024
# pg_snapshot's text form: xmin:xmax:xip,xip,...
SNAPSHOT_RE = re.compile(r"^(\d{1,20}):(\d{1,20}):((?:\d{1,20}(?:,\d{1,20})*)?)$")
POSITION_TYPES = (str, str, dt.datetime, str)


@dataclass(frozen=True)
class EventQuery:
    """A validated ListEvents request."""

    run_id: str
    kinds: tuple[str, ...]
    limit: int
    # (snapshot, run_id, time, event_id) of the last row served, None on the first page.
    after: tuple | None

    @property
    def filters(self) -> dict:
        return {"run_id": self.run_id, "kinds": list(self.kinds)}


def parse_request(run_id: str, kinds: Sequence[str], page_size: int, page_token: str) -> EventQuery:
    """InvalidArgument naming the field for a bad run_id, kind or token."""
    run_id = validate.identifier("run_id", run_id, required=False)
    chosen = tuple(sorted(validate.kinds(list(kinds))))
    query = EventQuery(run_id, chosen, validate.page_size(page_size), None)
    after = pagination.decode(SCOPE, page_token, query.filters, POSITION_TYPES)
    if after is not None:
        _check_snapshot(after[0])
    return EventQuery(run_id, chosen, query.limit, after)


def _check_snapshot(text: str) -> None:
    match = SNAPSHOT_RE.match(text)
    ok = match is not None
    if ok:
        xmin, xmax = int(match[1]), int(match[2])
        xip = [int(x) for x in match[3].split(",")] if match[3] else []
        ok = xmin <= xmax < 1 << 63 and all(xmin <= x < xmax for x in xip)
    if not ok:
        raise InvalidArgument(pagination.FIELD, "malformed; pass the next_page_token of a previous response")


def _sql(query: EventQuery) -> tuple[str, list]:
    where, args = ["(stored_by IS NULL OR pg_visible_in_snapshot(stored_by, $1::text::pg_snapshot))"], []
    args.append(None)  # $1: the snapshot, filled in by list_events

    def arg(value) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.run_id:
        where.append(f"run_id = {arg(query.run_id)}")
    if query.kinds:
        where.append(f"kind = ANY({arg(list(query.kinds))}::text[])")
    if query.after is not None:
        _, run, time, event_id = query.after
        if query.run_id:
            where.append(f"(time, event_id) > ({arg(time)}, {arg(event_id)})")
        else:
            where.append(f"(run_id, time, event_id) > ({arg(run)}, {arg(time)}, {arg(event_id)})")
    sql = (f"SELECT run_id, time, event_id, body FROM nissa.events WHERE {' AND '.join(where)} "
           f"ORDER BY run_id, time, event_id LIMIT {arg(query.limit + 1)}")
    return sql, args


async def list_events(conn: asyncpg.Connection, query: EventQuery
                      ) -> tuple[list[telemetry_pb2.TelemetryEvent], str]:
    """One page of the listing and the token of the next ("" at the end)."""
    if query.after is None:
        snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
    else:
        snapshot = query.after[0]
    sql, args = _sql(query)
    args[0] = snapshot
    rows = await conn.fetch(sql, *args)
    page, size = [], 0
    for row in rows[:query.limit]:
        if page and size + len(row["body"]) > MAX_PAGE_BYTES:
            break
        page.append(row)
        size += len(row["body"])
    token = ""
    if len(page) < len(rows):
        last = page[-1]
        token = pagination.encode(SCOPE, (snapshot, last["run_id"], last["time"], last["event_id"]),
                                  query.filters)
    return [telemetry_pb2.TelemetryEvent.FromString(bytes(r["body"])) for r in page], token
