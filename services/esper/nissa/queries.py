"""Reading Nissa's history: runs, a run's summary, alerts."""

from __future__ import annotations

import datetime as dt

import asyncpg

from esper.leyline.v1 import lifecycle_pb2, nissa_pb2, telemetry_pb2

RUN_COLUMNS = """
r.run_id, r.listed, r.started_at, r.last_event_at, r.last_step, r.last_epoch, r.event_count,
(SELECT e.val_accuracy FROM nissa.epochs e WHERE e.run_id = r.run_id
  ORDER BY e.epoch DESC, e.step DESC LIMIT 1) AS last_val_accuracy,
(SELECT count(*) FROM nissa.seed_transitions t WHERE t.run_id = r.run_id
  AND t.to_stage = $FOSSILIZED) AS fossilized,
(SELECT count(*) FROM nissa.seed_transitions t WHERE t.run_id = r.run_id
  AND t.to_stage = $CULLED) AS culled
""".replace("$FOSSILIZED", str(lifecycle_pb2.SEED_STAGE_FOSSILIZED)).replace(
    "$CULLED", str(lifecycle_pb2.SEED_STAGE_CULLED)
)


def _ts(value: dt.datetime, target) -> None:
    target.FromDatetime(value)


def run_info(row: asyncpg.Record) -> nissa_pb2.RunInfo:
    info = nissa_pb2.RunInfo(
        run_id=row["run_id"],
        last_step=row["last_step"],
        last_epoch=row["last_epoch"],
        last_val_accuracy=row["last_val_accuracy"] or 0.0,
        event_count=row["event_count"],
        fossilized=row["fossilized"],
        culled=row["culled"],
    )
    _ts(row["started_at"], info.started_at)
    _ts(row["last_event_at"], info.last_event_at)
    return info


async def list_runs(
    conn: asyncpg.Connection, limit: int, after: tuple[int] | None
) -> list[tuple[tuple[int], nissa_pb2.RunInfo]]:
    """Up to `limit` runs, newest first (in the order Nissa first saw them), after the
    keyset position `after`; each with its own position."""
    rows = await conn.fetch(
        f"SELECT {RUN_COLUMNS} FROM nissa.runs r WHERE ($1::bigint IS NULL OR r.listed < $1) "
        "ORDER BY r.listed DESC LIMIT $2",
        after[0] if after else None,
        limit,
    )
    return [((r["listed"],), run_info(r)) for r in rows]


async def get_run(conn: asyncpg.Connection, run_id: str) -> nissa_pb2.RunInfo | None:
    row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM nissa.runs r WHERE r.run_id = $1", run_id)
    return run_info(row) if row else None


async def run_summary(
    conn: asyncpg.Connection, run_id: str
) -> nissa_pb2.GetRunSummaryResponse | None:
    run = await get_run(conn, run_id)
    if run is None:
        return None
    summary = nissa_pb2.GetRunSummaryResponse(run=run)
    for r in await conn.fetch(
        "SELECT * FROM nissa.epochs WHERE run_id = $1 ORDER BY epoch, step, time", run_id
    ):
        summary.epochs.add(
            epoch=r["epoch"],
            step=r["step"],
            train_loss=r["train_loss"],
            val_loss=r["val_loss"],
            train_accuracy=r["train_accuracy"],
            val_accuracy=r["val_accuracy"],
            total_params=r["total_params"],
            seed_params=r["seed_params"],
            live_seeds=r["live_seeds"],
        )
    for r in await conn.fetch(
        "SELECT body FROM nissa.seed_transitions WHERE run_id = $1 ORDER BY step, time, event_id",
        run_id,
    ):
        summary.seed_timeline.add().ParseFromString(r["body"])
    await _add_decisions(conn, run_id, summary)
    for r in await conn.fetch(
        "SELECT body FROM nissa.field_reports WHERE run_id = $1 ORDER BY time, event_id", run_id
    ):
        summary.field_reports.add().ParseFromString(r["body"])
    alerts = await list_alerts(
        conn, run_id=run_id, min_severity=0, include_acknowledged=True, limit=1000, after=None
    )
    summary.alerts.extend(alert for _, alert in alerts)
    return summary


async def _add_decisions(
    conn: asyncpg.Connection, run_id: str, summary: nissa_pb2.GetRunSummaryResponse
) -> None:
    rows = await conn.fetch(
        """SELECT d.body AS decision, a.body AS ack FROM nissa.decisions d
           LEFT JOIN LATERAL (SELECT body FROM nissa.acks a WHERE a.decision_id = d.decision_id
                              ORDER BY a.time DESC LIMIT 1) a ON true
           WHERE d.run_id = $1 ORDER BY d.issued_at_step, d.time, d.event_id""",
        run_id,
    )
    for r in rows:
        record = summary.decisions.add()
        record.decision.ParseFromString(r["decision"])
        if r["ack"] is not None:
            record.ack.ParseFromString(r["ack"])


def alert_message(row: asyncpg.Record) -> telemetry_pb2.Alert:
    alert = telemetry_pb2.Alert(
        alert_id=row["alert_id"],
        rule=row["rule"],
        severity=row["severity"],
        run_id=row["run_id"],
        service=row["service"],
        message=row["message"],
        acknowledged=row["acknowledged"],
        event_id=row["event_id"],
    )
    _ts(row["fired_at"], alert.fired_at)
    return alert


async def list_alerts(
    conn: asyncpg.Connection,
    *,
    run_id: str,
    min_severity: int,
    include_acknowledged: bool,
    limit: int,
    after: tuple[dt.datetime, str] | None,
) -> list[tuple[tuple[dt.datetime, str], telemetry_pb2.Alert]]:
    """Up to `limit` alerts, newest first, after the keyset position `after`; each with its
    own position."""
    fired_at, alert_id = after if after else (None, None)
    rows = await conn.fetch(
        """SELECT * FROM nissa.alerts
           WHERE ($1 = '' OR run_id = $1) AND severity >= $2 AND ($3 OR NOT acknowledged)
             AND ($4::timestamptz IS NULL OR (fired_at, alert_id) < ($4, $5::text))
           ORDER BY fired_at DESC, alert_id DESC LIMIT $6""",
        run_id,
        min_severity,
        include_acknowledged,
        fired_at,
        alert_id,
        limit,
    )
    return [((r["fired_at"], r["alert_id"]), alert_message(r)) for r in rows]


async def acknowledge_alert(conn: asyncpg.Connection, alert_id: str) -> telemetry_pb2.Alert | None:
    row = await conn.fetchrow(
        """UPDATE nissa.alerts SET acknowledged = true,
                  acknowledged_at = coalesce(acknowledged_at, now())
           WHERE alert_id = $1 RETURNING *""",
        alert_id,
    )
    return alert_message(row) if row else None


async def heartbeats(conn: asyncpg.Connection) -> list[tuple[str, str, int, dt.datetime]]:
    rows = await conn.fetch(
        "SELECT service, instance_id, interval_seconds, last_seen FROM nissa.heartbeats"
    )
    return [(r["service"], r["instance_id"], r["interval_seconds"], r["last_seen"]) for r in rows]


__all__ = ["acknowledge_alert", "get_run", "heartbeats", "list_alerts", "list_runs", "run_summary"]
