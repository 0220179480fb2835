"""Translate decoded TelemetryEvents into the rows of Nissa's tables. Pure logic."""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from esper.leyline.v1 import lifecycle_pb2, telemetry_pb2

UTC = dt.UTC
# Stages in which a seed is alive in the model (counted as "live seeds").
LIVE_STAGES = frozenset(
    {
        lifecycle_pb2.SEED_STAGE_GERMINATED,
        lifecycle_pb2.SEED_STAGE_TRAINING,
        lifecycle_pb2.SEED_STAGE_BLENDING,
        lifecycle_pb2.SEED_STAGE_SHADOWING,
        lifecycle_pb2.SEED_STAGE_PROBATIONARY,
    }
)
# PostgreSQL timestamptz covers years 4713 BC..294276 AD; Python datetime 1..9999. Events
# claiming times outside this sane window are stamped with the ingest time instead.
MIN_EVENT_TIME = dt.datetime(2000, 1, 1, tzinfo=UTC)
MAX_EVENT_TIME = dt.datetime(9000, 1, 1, tzinfo=UTC)
# bigint is signed: uint64 values above this are clamped so hostile input cannot fail a batch.
MAX_BIGINT = 2**63 - 1
MAX_INT32 = 2**31 - 1


# PostgreSQL text cannot hold the NUL character: COPY fails the whole batch on one.
NUL = "\x00"


# The event's strings that go into text columns, per payload kind (everything else of an
# event is stored only as bytes, in `body`).
_BASE_TEXTS = ("event_id", "run_id", "source")
_KIND_TEXTS: dict[str, tuple[str, ...]] = {
    "seed_transition": ("seed_id", "slot_id", "reason", "blueprint_ref"),
    "decision": ("decision_id", "run_id"),
    "ack": ("decision_id", "run_id", "reason"),
    "field_report": ("run_id", "seed_id", "blueprint_ref"),
    "alert": ("alert_id", "event_id", "rule", "run_id", "service", "message"),
    "heartbeat": ("service", "instance_id"),
}
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    kind: _BASE_TEXTS + tuple(f"{kind}.{name}" for name in _KIND_TEXTS.get(kind, ()))
    for kind in ("", *(f.name for f in
                       telemetry_pb2.TelemetryEvent.DESCRIPTOR.oneofs_by_name["payload"].fields))
}
# One C-level getter per kind: reading the fields costs less than a Python loop over them.
_TEXT_GETTERS = {kind: operator.attrgetter(*names) for kind, names in TEXT_FIELDS.items()}


def unstorable_reason(event: telemetry_pb2.TelemetryEvent) -> str | None:
    """Why PostgreSQL cannot store `event`, or None when it can. Such an event is refused
    (dead-lettered) rather than altered: a run id with its NUL replaced would name another
    run. One join and one search per event: this runs for every ingested event."""
    kind = event.WhichOneof("payload") or ""
    texts = _TEXT_GETTERS[kind](event)
    if NUL not in "".join(texts):
        return None
    field_name = next(n for n, t in zip(TEXT_FIELDS[kind], texts, strict=True) if NUL in t)
    return f"{field_name} holds a NUL character, which PostgreSQL text cannot store"


@dataclass
class IngestRows:
    """Rows per table for one batch, in the column order of the migration."""

    events: list[tuple] = field(default_factory=list)
    epochs: list[tuple] = field(default_factory=list)
    seed_transitions: list[tuple] = field(default_factory=list)
    decisions: list[tuple] = field(default_factory=list)
    acks: list[tuple] = field(default_factory=list)
    field_reports: list[tuple] = field(default_factory=list)
    heartbeats: list[tuple] = field(default_factory=list)
    alerts: list[tuple] = field(default_factory=list)
    # The payload kind of each event, in batch order (parallel to `events`).
    kinds: list[str] = field(default_factory=list)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MIN_EVENT_SECONDS = int((MIN_EVENT_TIME - _EPOCH).total_seconds())
_MAX_EVENT_SECONDS = int((MAX_EVENT_TIME - _EPOCH).total_seconds())
# A valid google.protobuf.Timestamp has 0 <= nanos < 1e9.
_NANOS_PER_SECOND = 1_000_000_000


def event_time(event: telemetry_pb2.TelemetryEvent, now: dt.datetime) -> dt.datetime:
    """The event's wall-clock time, or `now` when it is unset, invalid or absurd. The
    window is checked on the integers before any datetime is built (Timestamp.ToDatetime
    costs more than the rest of an event's rows together)."""
    if not event.HasField("time"):
        return now
    stamp = event.time
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (
        _MIN_EVENT_SECONDS <= seconds <= _MAX_EVENT_SECONDS and 0 <= nanos < _NANOS_PER_SECOND
    ):
        return now
    # Positional timedelta arguments: half the cost of keywords, on every ingested event.
    when = _EPOCH + dt.timedelta(0, seconds, nanos // 1000)
    return when if when <= MAX_EVENT_TIME else now


def _big(value: int) -> int:
    return value if value <= MAX_BIGINT else MAX_BIGINT


def _int32(value: int) -> int:
    return value if value <= MAX_INT32 else MAX_INT32


def step_and_epoch(
    event: telemetry_pb2.TelemetryEvent, kind: str | None = None
) -> tuple[int | None, int | None]:
    kind = kind if kind is not None else event.WhichOneof("payload")
    if kind == "snapshot":
        return _big(event.snapshot.step), _int32(event.snapshot.epoch)
    if kind == "seed_transition":
        return _big(event.seed_transition.step), _int32(event.seed_transition.epoch)
    if kind == "ack":
        return _big(event.ack.step), None
    if kind == "decision":
        return _big(event.decision.issued_at_step), None
    return None, None


def live_seed_count(snapshot) -> int:
    return sum(1 for seed in snapshot.seeds if seed.stage in LIVE_STAGES)


def rows_for(
    batch: Sequence[tuple[telemetry_pb2.TelemetryEvent, bytes]], now: dt.datetime | None = None
) -> IngestRows:
    """Rows of every table for `batch` of (event, its serialized bytes). This runs for
    every ingested event, so snapshots (most of the traffic) take a path that reads each
    field once, and each event's kind is read once and kept in `rows.kinds`."""
    now = now or dt.datetime.now(UTC)
    rows = IngestRows()
    add_event, add_kind = rows.events.append, rows.kinds.append
    for event, body in batch:
        when = event_time(event, now)
        kind = event.WhichOneof("payload") or ""
        if kind == "snapshot":
            snap = event.snapshot
            step, epoch = _big(snap.step), _int32(snap.epoch)
            if snap.epoch_end:
                rows.epochs.append(_epoch_row(event, snap, step, epoch, when))
        else:
            step, epoch = step_and_epoch(event, kind)
            _add_payload_rows(rows, event, kind, when, now)
        add_kind(kind)
        add_event(
            (
                event.event_id,
                event.run_id,
                kind,
                event.source,
                event.severity,
                when,
                step,
                epoch,
                now,
                body,
            )
        )
    return rows


def _epoch_row(event, snap, step: int, epoch: int, when: dt.datetime) -> tuple:
    metrics, resources = snap.metrics, snap.resources
    return (
        event.event_id,
        event.run_id,
        epoch,
        step,
        metrics.train_loss,
        metrics.val_loss,
        metrics.train_accuracy,
        metrics.val_accuracy,
        _big(resources.total_params),
        _big(resources.seed_params),
        live_seed_count(snap),
        when,
    )


def _add_payload_rows(
    rows: IngestRows, event, kind: str, when: dt.datetime, now: dt.datetime
) -> None:
    eid, run = event.event_id, event.run_id
    if kind == "seed_transition":
        t = event.seed_transition
        rows.seed_transitions.append(
            (
                eid,
                run,
                t.seed_id,
                t.slot_id,
                t.from_stage,
                t.to_stage,
                _big(t.step),
                _int32(t.epoch),
                t.reason,
                t.blueprint_ref,
                when,
                t.SerializeToString(),
            )
        )
    elif kind == "decision":
        d = event.decision
        rows.decisions.append(
            (
                eid,
                d.decision_id,
                run or d.run_id,
                d.WhichOneof("action") or "",
                _big(d.issued_at_step),
                when,
                d.SerializeToString(),
            )
        )
    elif kind == "ack":
        a = event.ack
        rows.acks.append(
            (
                eid,
                a.decision_id,
                run or a.run_id,
                a.status,
                a.reason,
                _big(a.step),
                when,
                a.SerializeToString(),
            )
        )
    elif kind == "field_report":
        f = event.field_report
        rows.field_reports.append(
            (
                eid,
                run or f.run_id,
                f.seed_id,
                f.blueprint_ref,
                f.final_stage,
                when,
                f.SerializeToString(),
            )
        )
    elif kind == "alert":
        rows.alerts.append(alert_row(event.alert, eid, when))
    elif kind == "heartbeat":
        h = event.heartbeat
        rows.heartbeats.append(
            (h.service or event.source, h.instance_id, _int32(h.interval_seconds), now)
        )


def alert_row(alert: telemetry_pb2.Alert, event_id: str, when: dt.datetime) -> tuple:
    """A row of nissa.alerts (acknowledged state is Nissa's own, never taken from input)."""
    fired = when
    if alert.HasField("fired_at"):
        try:
            fired = alert.fired_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            fired = when
        if not MIN_EVENT_TIME <= fired <= MAX_EVENT_TIME:
            fired = when
    return (
        alert.alert_id or event_id,
        alert.event_id or event_id,
        alert.rule,
        alert.severity,
        alert.run_id,
        alert.service,
        alert.message,
        fired,
    )
