"""Alert rules, evaluated on every newly ingested event. Pure logic: state per run lives
in memory; alert ids are derived from what triggered them, so re-evaluating a redelivered
event (after a restart) yields the same id and the stored alert is not duplicated."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from math import isfinite

from esper.leyline.v1 import control_pb2, lifecycle_pb2, telemetry_pb2

# Namespace of the deterministic alert ids (uuid5 of rule and trigger).
ALERT_NAMESPACE = uuid.UUID("6f1c1d52-5a0e-4f43-9a55-0e7f3c9a1b7e")
# The reason prefix Kasmina writes when its circuit breaker culls a seed.
INSTABILITY_REASON = "INSTABILITY"

RULE_NAN = "nan_in_training"
RULE_DIVERGENCE = "loss_divergence"
RULE_BREAKER_CULL = "seed_culled_by_circuit_breaker"
RULE_REJECTIONS = "decision_rejections"
RULE_DROPS = "telemetry_drops"
RULE_HEARTBEAT = "heartbeat_missing"
RULES = (RULE_NAN, RULE_DIVERGENCE, RULE_BREAKER_CULL, RULE_REJECTIONS, RULE_DROPS, RULE_HEARTBEAT)


@dataclass(frozen=True)
class AlertThresholds:
    """Configurable thresholds (NissaConfig maps its alert_* fields onto these)."""

    # Train loss above this multiple of the run's best train loss means divergence.
    loss_divergence_factor: float = 3.0
    # Snapshots a run needs before divergence is judged (early losses are noisy).
    loss_divergence_min_snapshots: int = 5
    # ...and the loss must also have risen this much above the best, in loss units: near
    # convergence a window's loss swings by multiples of a tiny best (0.004 -> 0.02 on an
    # easy batch) while a diverging classifier climbs by whole nats.
    loss_divergence_min_rise: float = 0.5
    # Acks per run considered for the rejection rate.
    rejection_window: int = 20
    # Fraction of rejected acks in the window that raises an alert.
    rejection_rate: float = 0.5
    # Acks needed in the window before the rate means anything.
    rejection_min_acks: int = 5
    # Seconds between two telemetry-drop alerts of one run (drops come in bursts).
    drop_alert_cooldown_s: float = 60.0
    # A heartbeat is missing after this many of its intervals without a beat.
    heartbeat_grace_factor: float = 3.0


@dataclass
class _RunState:
    snapshots: int = 0
    best_loss: float = math.inf
    diverged: bool = False
    acks: deque = field(default_factory=deque)
    rejecting: bool = False
    dropped: int = 0
    last_drop_alert: dt.datetime | None = None


def _layers_non_finite(layers) -> bool:
    for layer in layers:
        if layer.nan_count or layer.inf_count:
            return True
    return False


def alert_id(rule: str, trigger: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{rule}|{trigger}"))


def _alert(
    rule: str,
    trigger: str,
    severity: int,
    event: telemetry_pb2.TelemetryEvent,
    when: dt.datetime,
    message: str,
    *,
    service: str = "",
) -> telemetry_pb2.Alert:
    alert = telemetry_pb2.Alert(
        alert_id=alert_id(rule, trigger),
        rule=rule,
        severity=severity,
        run_id=event.run_id,
        service=service,
        message=message,
        event_id=event.event_id,
    )
    alert.fired_at.FromDatetime(when)
    return alert


class AlertRules:
    """Evaluates the rules; `evaluate` for ingested events, `missing_heartbeats` on a timer."""

    def __init__(self, thresholds: AlertThresholds | None = None) -> None:
        self.thresholds = thresholds or AlertThresholds()
        self._runs: dict[str, _RunState] = defaultdict(_RunState)
        self._window = self.thresholds.rejection_window

    def evaluate(
        self, event: telemetry_pb2.TelemetryEvent, when: dt.datetime, kind: str | None = None
    ) -> list[telemetry_pb2.Alert]:
        """Alerts raised by one new event; `kind`: its payload kind, when already known."""
        if kind is None:
            kind = event.WhichOneof("payload")
        if kind == "snapshot":
            return self._snapshot(event, when)
        if kind == "seed_transition":
            return self._transition(event, when)
        if kind == "field_report":
            return self._field_report(event, when)
        if kind == "ack":
            return self._ack(event, when)
        return []

    def _snapshot(self, event, when) -> list[telemetry_pb2.Alert]:
        # Every training snapshot passes here: read each field once, and build the NaN
        # message only when something is not finite.
        snap = event.snapshot
        metrics = snap.metrics
        loss = metrics.train_loss
        alerts = []
        if not (
            isfinite(loss)
            and isfinite(metrics.grad_norm)
            and (not snap.epoch_end or isfinite(metrics.val_loss))
            and not _layers_non_finite(snap.layers)
        ):
            alerts.append(
                _alert(
                    RULE_NAN,
                    f"{event.run_id}|{snap.epoch}",
                    telemetry_pb2.SEVERITY_CRITICAL,
                    event,
                    when,
                    f"non-finite values in training at step {snap.step}: "
                    f"{self._non_finite(snap)}",
                )
            )
        state = self._runs[event.run_id]
        if isfinite(loss):
            alerts.extend(self._divergence(event, state, loss, when))
        dropped = snap.resources.telemetry_dropped
        if dropped > state.dropped:
            alerts.extend(self._drops(event, state, dropped, when))
        return alerts

    @staticmethod
    def _non_finite(snap) -> str:
        """What is not finite in a snapshot, for the alert's message."""
        found = []
        m = snap.metrics
        if not math.isfinite(m.train_loss):
            found.append(f"train_loss={m.train_loss}")
        if not math.isfinite(m.grad_norm):
            found.append(f"grad_norm={m.grad_norm}")
        if snap.epoch_end and not math.isfinite(m.val_loss):  # NaN before the first eval
            found.append(f"val_loss={m.val_loss}")
        for layer in snap.layers:
            if layer.nan_count or layer.inf_count:
                found.append(f"{layer.layer_id}: {layer.nan_count} NaN, {layer.inf_count} Inf")
        return "; ".join(found)

    def _divergence(self, event, state: _RunState, loss: float, when):
        t = self.thresholds
        state.snapshots += 1
        state.best_loss = min(state.best_loss, loss)
        diverging = (
            state.snapshots >= t.loss_divergence_min_snapshots
            and state.best_loss > 0
            and loss > t.loss_divergence_factor * state.best_loss
            and loss - state.best_loss >= t.loss_divergence_min_rise
        )
        fire = diverging and not state.diverged
        state.diverged = diverging
        if not fire:
            return []
        return [
            _alert(
                RULE_DIVERGENCE,
                event.event_id,
                telemetry_pb2.SEVERITY_ERROR,
                event,
                when,
                f"train loss {loss:.4g} at step {event.snapshot.step} is above "
                f"{t.loss_divergence_factor}x the best {state.best_loss:.4g}",
            )
        ]

    def _drops(self, event, state: _RunState, dropped: int, when):
        previous, state.dropped = state.dropped, dropped
        last = state.last_drop_alert
        if (
            last is not None
            and (when - last).total_seconds() < self.thresholds.drop_alert_cooldown_s
        ):
            return []
        state.last_drop_alert = when
        return [
            _alert(
                RULE_DROPS,
                event.event_id,
                telemetry_pb2.SEVERITY_WARNING,
                event,
                when,
                f"the training process dropped {dropped - previous} telemetry events "
                f"({dropped} in total)",
            )
        ]

    def _transition(self, event, when):
        t = event.seed_transition
        if t.to_stage != lifecycle_pb2.SEED_STAGE_CULLED:
            return []
        if not t.reason.upper().startswith(INSTABILITY_REASON):
            return []
        return [self._breaker_alert(event, t.seed_id, t.slot_id, t.reason, when)]

    def _field_report(self, event, when):
        f = event.field_report
        if f.cull_reason != control_pb2.CULL_REASON_INSTABILITY:
            return []
        return [self._breaker_alert(event, f.seed_id, f.slot_id, "INSTABILITY", when)]

    @staticmethod
    def _breaker_alert(event, seed_id: str, slot_id: str, reason: str, when):
        return _alert(
            RULE_BREAKER_CULL,
            f"{event.run_id}|{seed_id}",
            telemetry_pb2.SEVERITY_WARNING,
            event,
            when,
            f"seed {seed_id} in slot {slot_id} culled by its circuit breaker: {reason}",
        )

    def _ack(self, event, when):
        t, state = self.thresholds, self._runs[event.run_id]
        state.acks.append(event.ack.status == control_pb2.ACK_STATUS_REJECTED)
        while len(state.acks) > self._window:
            state.acks.popleft()
        rate = sum(state.acks) / len(state.acks)
        above = len(state.acks) >= t.rejection_min_acks and rate > t.rejection_rate
        fire = above and not state.rejecting
        state.rejecting = above
        if not fire:
            return []
        return [
            _alert(
                RULE_REJECTIONS,
                event.event_id,
                telemetry_pb2.SEVERITY_WARNING,
                event,
                when,
                f"{rate:.0%} of the last {len(state.acks)} decisions were rejected "
                f"(threshold {t.rejection_rate:.0%})",
            )
        ]

    def missing_heartbeats(
        self, beats: list[tuple[str, str, int, dt.datetime]], now: dt.datetime
    ) -> list[telemetry_pb2.Alert]:
        """Alerts for (service, instance, interval_s, last_seen) beats that are overdue;
        one alert per missed beat (the id is keyed by the last beat seen)."""
        alerts = []
        for service, instance, interval, last_seen in beats:
            overdue = max(interval, 1) * self.thresholds.heartbeat_grace_factor
            silent = (now - last_seen).total_seconds()
            if silent <= overdue:
                continue
            trigger = f"{service}|{instance}|{last_seen.isoformat()}"
            alert = telemetry_pb2.Alert(
                alert_id=alert_id(RULE_HEARTBEAT, trigger),
                rule=RULE_HEARTBEAT,
                severity=telemetry_pb2.SEVERITY_ERROR,
                service=service,
                message=f"{service} ({instance or 'instance ?'}) sent no heartbeat for "
                f"{silent:.0f} s (every {interval} s expected)",
            )
            alert.fired_at.FromDatetime(now)
            alerts.append(alert)
        return alerts
