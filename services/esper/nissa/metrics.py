"""Nissa's Prometheus metrics: ingest counters and the per-run training gauges."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter as Tally

from prometheus_client import REGISTRY, Counter, Gauge

from esper.leyline.v1 import lifecycle_pb2, telemetry_pb2
from esper.nissa.rows import LIVE_STAGES, event_time

INGESTED = Counter(
    "esper_nissa_events_ingested_total",
    "Events stored (new ones only)",
    ["kind"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "esper_nissa_events_duplicate_total",
    "Redelivered events recognised by their id and skipped",
    registry=REGISTRY,
)
ALERTS = Counter("esper_nissa_alerts_total", "Alerts raised by rule", ["rule"], registry=REGISTRY)
RUN_LOSS = Gauge(
    "esper_nissa_run_loss", "Latest loss of a run", ["run_id", "split"], registry=REGISTRY
)
RUN_ACCURACY = Gauge(
    "esper_nissa_run_accuracy", "Latest accuracy of a run", ["run_id", "split"], registry=REGISTRY
)
RUN_SEEDS = Gauge(
    "esper_nissa_run_live_seeds",
    "Live seeds of a run by stage",
    ["run_id", "stage"],
    registry=REGISTRY,
)
RUN_PARAMS = Gauge(
    "esper_nissa_run_params",
    "Parameters of a run (total, and added by seeds)",
    ["run_id", "kind"],
    registry=REGISTRY,
)
RUN_LAG = Gauge(
    "esper_nissa_run_telemetry_lag_seconds",
    "Seconds between a run's latest snapshot and its ingestion",
    ["run_id"],
    registry=REGISTRY,
)

LIVE_STAGE_NAMES = {
    s: lifecycle_pb2.SeedStage.Name(s).removeprefix("SEED_STAGE_").lower() for s in LIVE_STAGES
}


def observe(
    kinds: dict[str, int],
    received: int,
    alert_rules: list[str],
    latest_snapshots: list[telemetry_pb2.TelemetryEvent],
    now: dt.datetime,
) -> None:
    """Update the metrics after a stored batch: new events by kind out of `received`, the
    rules of the alerts raised, and each run's latest snapshot in the batch (the run gauges
    hold the latest values, so setting them once per run and batch ends in the same state
    as setting them for every snapshot, at a fraction of the cost)."""
    new = 0
    for kind, count in kinds.items():
        INGESTED.labels(kind).inc(count)
        new += count
    DUPLICATES.inc(received - new)
    for rule in alert_rules:
        ALERTS.labels(rule).inc()
    for event in latest_snapshots:
        _observe_snapshot(event, now)


def _observe_snapshot(event: telemetry_pb2.TelemetryEvent, now: dt.datetime) -> None:
    run, snap = event.run_id, event.snapshot
    m = snap.metrics
    RUN_LOSS.labels(run, "train").set(m.train_loss)
    RUN_ACCURACY.labels(run, "train").set(m.train_accuracy)
    if math.isfinite(m.val_loss):
        RUN_LOSS.labels(run, "val").set(m.val_loss)
        RUN_ACCURACY.labels(run, "val").set(m.val_accuracy)
    stages = Tally(seed.stage for seed in snap.seeds if seed.stage in LIVE_STAGES)
    for stage, name in LIVE_STAGE_NAMES.items():
        RUN_SEEDS.labels(run, name).set(stages.get(stage, 0))
    RUN_PARAMS.labels(run, "total").set(snap.resources.total_params)
    RUN_PARAMS.labels(run, "seed").set(snap.resources.seed_params)
    RUN_LAG.labels(run).set(max(0.0, (now - event_time(event, now)).total_seconds()))
