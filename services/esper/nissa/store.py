"""Writing a batch of events into Nissa's tables, in one transaction, so that an event
delivered twice is stored, counted and alerted on once.

Two paths. The common one: a batch of events never seen before is COPYed straight into
the tables under a savepoint, and the runs' totals are added in one statement. When that
COPY meets an id already stored (a redelivery after a restart or rebalance, a producer's
retry within the batch) the savepoint is rolled back and the batch takes the deduplicating
path: COPY into per-connection staging tables, then INSERT ... ON CONFLICT DO NOTHING.
Redeliveries are rare, and the direct path costs PostgreSQL about half as much per event."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import asyncpg

from esper.leyline.v1 import telemetry_pb2
from esper.nissa.rows import IngestRows, alert_row, rows_for

COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (
        "event_id",
        "run_id",
        "kind",
        "source",
        "severity",
        "time",
        "step",
        "epoch",
        "ingested_at",
        "body",
    ),
    "epochs": (
        "event_id",
        "run_id",
        "epoch",
        "step",
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "total_params",
        "seed_params",
        "live_seeds",
        "time",
    ),
    "seed_transitions": (
        "event_id",
        "run_id",
        "seed_id",
        "slot_id",
        "from_stage",
        "to_stage",
        "step",
        "epoch",
        "reason",
        "blueprint_ref",
        "time",
        "body",
    ),
    "decisions": ("event_id", "decision_id", "run_id", "action", "issued_at_step", "time", "body"),
    "acks": ("event_id", "decision_id", "run_id", "status", "reason", "step", "time", "body"),
    "field_reports": (
        "event_id",
        "run_id",
        "seed_id",
        "blueprint_ref",
        "final_stage",
        "time",
        "body",
    ),
    "alerts": (
        "alert_id",
        "event_id",
        "rule",
        "severity",
        "run_id",
        "service",
        "message",
        "fired_at",
    ),
}
DERIVED_TABLES = ("epochs", "seed_transitions", "decisions", "acks", "field_reports")

# Adds a batch's per-run totals (rows of run_id, first time, last time, highest step and
# epoch, events) to nissa.runs; both write paths use it.
_ADD_TO_RUNS = """
    INSERT INTO nissa.runs AS r (run_id, started_at, last_event_at, last_step, last_epoch,
                                 event_count)
    {totals}
    ON CONFLICT (run_id) DO UPDATE SET
        started_at    = least(r.started_at, excluded.started_at),
        last_event_at = greatest(r.last_event_at, excluded.last_event_at),
        last_step     = greatest(r.last_step, excluded.last_step),
        last_epoch    = greatest(r.last_epoch, excluded.last_epoch),
        event_count   = r.event_count + excluded.event_count
"""

INSERT_EVENTS = """
WITH ins AS (
    INSERT INTO nissa.events SELECT * FROM pg_temp.in_events ON CONFLICT DO NOTHING
    RETURNING event_id, run_id, time, step, epoch
), runs AS (""" + _ADD_TO_RUNS.format(totals="""
    SELECT run_id, min(time), max(time), coalesce(max(step), 0), coalesce(max(epoch), 0),
           count(*)
    FROM ins WHERE run_id <> '' GROUP BY run_id""") + """)
SELECT event_id FROM ins
"""

ADD_RUN_TOTALS = _ADD_TO_RUNS.format(totals="""
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[],
                         $5::integer[], $6::bigint[])""")

UPSERT_HEARTBEAT = """
INSERT INTO nissa.heartbeats AS h (service, instance_id, interval_seconds, last_seen)
VALUES ($1, $2, $3, $4)
ON CONFLICT (service, instance_id) DO UPDATE SET
    interval_seconds = excluded.interval_seconds,
    last_seen = greatest(h.last_seen, excluded.last_seen)
"""

# A newly stored event: the event, its serialized bytes, its time and its payload kind.
NewEvent = tuple[telemetry_pb2.TelemetryEvent, bytes, dt.datetime, str]
# Alert rules see the new events of a batch and return the alerts they raise.
RuleHook = Callable[[list[NewEvent]], list[telemetry_pb2.Alert]]


# Temporary staging tables of a connection (emptied at every commit), created in one
# round trip: a script without parameters runs as one simple query.
ENSURE_STAGING = ";\n".join(
    f"CREATE TEMP TABLE IF NOT EXISTS in_{table} "
    f"(LIKE nissa.{table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    for table in ("events", "alerts", *DERIVED_TABLES)
)


async def _ensure_staging(conn: asyncpg.Connection) -> None:
    await conn.execute(ENSURE_STAGING)


async def _stage(conn: asyncpg.Connection, table: str, records: list[tuple]) -> None:
    if records:
        await conn.copy_records_to_table(
            f"in_{table}", records=records, columns=list(COLUMNS[table]), schema_name="pg_temp"
        )


async def ingest_batch(
    conn: asyncpg.Connection,
    batch: Sequence[tuple[telemetry_pb2.TelemetryEvent, bytes]],
    rules: RuleHook | None = None,
    rows: IngestRows | None = None,
) -> tuple[list[NewEvent], list[telemetry_pb2.Alert]]:
    """Store `batch` in one transaction. Returns the events that were new (not stored
    before), in batch order, and the alerts the rules raised on them (stored in the same
    transaction).
    `rows`: the batch's rows when the caller built them already (rows_for(batch))."""
    if rows is None:
        rows = rows_for(batch)
    async with conn.transaction():
        new = await _store_all_new(conn, batch, rows)
        if new is None:
            new = await _store_deduplicated(conn, batch, rows)
        raised = rules(new) if rules else []
        alert_rows = rows.alerts + [
            alert_row(a, a.event_id, a.fired_at.ToDatetime(tzinfo=dt.UTC)) for a in raised
        ]
        stored_alerts = await _store_alerts(conn, alert_rows)
        if rows.heartbeats:
            await conn.executemany(UPSERT_HEARTBEAT, _latest_beats(rows.heartbeats))
    return new, [a for a in raised if a.alert_id in stored_alerts]


async def _store_all_new(
    conn: asyncpg.Connection, batch, rows: IngestRows
) -> list[NewEvent] | None:
    """The direct path: COPY every row into its table, assuming no event of the batch was
    stored before. None (and nothing written) when one was."""
    try:
        async with conn.transaction():  # a savepoint: a duplicate undoes only this
            for table in ("events", *DERIVED_TABLES):
                records = getattr(rows, table)
                if records:
                    await conn.copy_records_to_table(
                        table, records=records, columns=list(COLUMNS[table]), schema_name="nissa"
                    )
            totals = run_totals(rows.events)
            if totals[0]:
                await conn.execute(ADD_RUN_TOTALS, *totals)
    except asyncpg.UniqueViolationError:
        return None
    return [
        (event, body, row[5], kind)
        for (event, body), row, kind in zip(batch, rows.events, rows.kinds, strict=True)
    ]


async def _store_deduplicated(
    conn: asyncpg.Connection, batch, rows: IngestRows
) -> list[NewEvent]:
    """The deduplicating path: staging tables and ON CONFLICT DO NOTHING."""
    await _ensure_staging(conn)
    await _stage(conn, "events", rows.events)
    new_ids = [r["event_id"] for r in await conn.fetch(INSERT_EVENTS)]
    for table in DERIVED_TABLES:
        records = getattr(rows, table)
        if records:
            await _stage(conn, table, records)
            await conn.execute(
                f"INSERT INTO nissa.{table} SELECT * FROM pg_temp.in_{table} "
                "ON CONFLICT DO NOTHING"
            )
    return _in_batch_order(batch, rows, set(new_ids))


def run_totals(event_rows: list[tuple]) -> tuple[list, list, list, list, list, list]:
    """Columns of ADD_RUN_TOTALS for the events rows of a batch: per run, the first and
    last event time, the highest step and epoch, and how many events."""
    totals: dict[str, list] = {}
    for row in event_rows:
        run = row[1]
        if not run:
            continue
        when, step, epoch = row[5], row[6] or 0, row[7] or 0
        total = totals.get(run)
        if total is None:
            totals[run] = [when, when, step, epoch, 1]
            continue
        if when < total[0]:
            total[0] = when
        elif when > total[1]:
            total[1] = when
        if step > total[2]:
            total[2] = step
        if epoch > total[3]:
            total[3] = epoch
        total[4] += 1
    columns = list(zip(*totals.values())) if totals else [(), (), (), (), ()]
    return (list(totals), *(list(column) for column in columns))


async def _store_alerts(conn: asyncpg.Connection, alert_rows: list[tuple]) -> set[str]:
    if not alert_rows:
        return set()
    await _ensure_staging(conn)
    await _stage(conn, "alerts", alert_rows)
    stored = await conn.fetch(
        "INSERT INTO nissa.alerts SELECT * FROM pg_temp.in_alerts "
        "ON CONFLICT DO NOTHING RETURNING alert_id"
    )
    return {r["alert_id"] for r in stored}


def _in_batch_order(batch, rows: IngestRows, new_ids: set[str]) -> list[NewEvent]:
    """The new events with their times and kinds, in the order they were consumed (Kafka
    order per partition, so per run), each once."""
    new = []
    for (event, body), row, kind in zip(batch, rows.events, rows.kinds, strict=True):
        if event.event_id in new_ids:
            new_ids.discard(event.event_id)
            new.append((event, body, row[5], kind))
    return new


def _latest_beats(beats: list[tuple]) -> list[tuple]:
    latest: dict[tuple[str, str], tuple] = {}
    for beat in beats:
        latest[(beat[0], beat[1])] = beat
    return list(latest.values())


async def store_alerts(
    conn: asyncpg.Connection, alerts: list[telemetry_pb2.Alert]
) -> list[telemetry_pb2.Alert]:
    """Store alerts raised outside ingest (heartbeats); returns those that were new."""
    async with conn.transaction():
        rows = [alert_row(a, a.event_id, a.fired_at.ToDatetime(tzinfo=dt.UTC)) for a in alerts]
        stored = await _store_alerts(conn, rows)
    return [a for a in alerts if a.alert_id in stored]
