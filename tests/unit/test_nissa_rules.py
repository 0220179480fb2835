"""Nissa's pure logic: alert rules, request validation, event-to-row translation."""

import datetime as dt

import pytest

from esper.leyline.v1 import control_pb2, lifecycle_pb2, signals_pb2, telemetry_pb2
from esper.nissa import validate
from esper.nissa.alerts import AlertRules, AlertThresholds
from esper.nissa.rows import MAX_BIGINT, rows_for
from esper.oona.envelope import new_event

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _snap(run="r", step=0, loss=1.0, dropped=0, nan=0):
    snap = signals_pb2.TrainingSnapshot(run_id=run, step=step)
    snap.metrics.train_loss = loss
    snap.resources.telemetry_dropped = dropped
    snap.layers.add(layer_id="l0", nan_count=nan)
    return new_event(source="tolaria", run_id=run, snapshot=snap)


def _rules_of(rules, events):
    return [a.rule for e in events for a in rules.evaluate(e, NOW)]


def test_nan_alert_once_per_epoch():
    rules = AlertRules()
    assert _rules_of(rules, [_snap(loss=float("nan")), _snap(nan=3)]).count("nan_in_training") == 2
    a = rules.evaluate(_snap(loss=float("inf")), NOW)[0]
    b = rules.evaluate(_snap(loss=float("inf")), NOW)[0]
    assert a.alert_id == b.alert_id  # same run and epoch: one stored alert


def test_loss_divergence_fires_once_per_episode():
    rules = AlertRules(AlertThresholds(loss_divergence_min_snapshots=3))
    losses = [1.0, 0.5, 0.4, 2.0, 3.0, 0.4, 5.0]
    fired = [bool(rules.evaluate(_snap(step=i, loss=x), NOW)) for i, x in enumerate(losses)]
    assert fired == [False, False, False, True, False, False, True]


def test_loss_noise_near_convergence_is_not_divergence():
    rules = AlertRules(AlertThresholds(loss_divergence_min_snapshots=3))
    losses = [0.05, 0.01, 0.004, 0.03, 0.02, 0.004, 0.6]
    fired = [bool(rules.evaluate(_snap(step=i, loss=x), NOW)) for i, x in enumerate(losses)]
    # 0.004 -> 0.03 is 7x the best but a rise of 0.026: noise. 0.6 is a real climb.
    assert fired == [False, False, False, False, False, False, True]


def test_breaker_cull_from_transition_and_report_share_an_id():
    rules = AlertRules()
    t = new_event(
        source="tolaria",
        run_id="r",
        seed_transition=telemetry_pb2.SeedTransition(
            seed_id="s1", to_stage=lifecycle_pb2.SEED_STAGE_CULLED, reason="INSTABILITY: x"
        ),
    )
    f = new_event(
        source="tamiyo",
        run_id="r",
        field_report=telemetry_pb2.FieldReport(
            seed_id="s1", cull_reason=control_pb2.CULL_REASON_INSTABILITY
        ),
    )
    manual = new_event(
        source="tolaria",
        run_id="r",
        seed_transition=telemetry_pb2.SeedTransition(
            seed_id="s2", to_stage=lifecycle_pb2.SEED_STAGE_CULLED, reason="MANUAL"
        ),
    )
    (a,), (b,) = rules.evaluate(t, NOW), rules.evaluate(f, NOW)
    assert a.alert_id == b.alert_id and a.rule == "seed_culled_by_circuit_breaker"
    assert rules.evaluate(manual, NOW) == []


def test_rejection_rate_and_drops():
    rules = AlertRules(
        AlertThresholds(rejection_window=4, rejection_min_acks=4, rejection_rate=0.5)
    )
    acks = [
        control_pb2.ACK_STATUS_APPLIED,
        control_pb2.ACK_STATUS_REJECTED,
        control_pb2.ACK_STATUS_REJECTED,
        control_pb2.ACK_STATUS_REJECTED,
        control_pb2.ACK_STATUS_REJECTED,
    ]
    events = [
        new_event(source="tolaria", run_id="r", ack=control_pb2.DecisionAck(status=s)) for s in acks
    ]
    assert _rules_of(rules, events) == ["decision_rejections"]
    drops = [_snap(dropped=0), _snap(dropped=5), _snap(dropped=9)]
    assert _rules_of(rules, drops) == ["telemetry_drops"]  # the second is in the cooldown


def test_missing_heartbeat():
    rules = AlertRules()
    beats = [
        ("tamiyo", "a", 5, NOW - dt.timedelta(seconds=16)),
        ("urza", "b", 5, NOW - dt.timedelta(seconds=4)),
    ]
    (alert,) = rules.missing_heartbeats(beats, NOW)
    assert alert.service == "tamiyo" and alert.rule == "heartbeat_missing"


def test_validation():
    assert validate.page_size(0) == 50 and validate.page_size(10**6) == 1000
    with pytest.raises(validate.InvalidArgument, match="^run_id: required"):
        validate.identifier("run_id", "", required=True)
    with pytest.raises(validate.InvalidArgument, match="control"):
        validate.identifier("run_id", "a\x00b", required=True)
    with pytest.raises(validate.InvalidArgument, match="kinds"):
        validate.kinds(["snapshot", "nope"])
    with pytest.raises(validate.InvalidArgument, match="min_severity"):
        validate.severity("min_severity", 42)


def test_rows_clamp_hostile_numbers_and_times():
    event = _snap(step=2**64 - 1)
    event.snapshot.epoch_end = True
    event.time.seconds = -(10**11)  # far outside any sane time
    rows = rows_for([(event, event.SerializeToString())], now=NOW)
    assert rows.events[0][5] == NOW and rows.events[0][6] == MAX_BIGINT
    assert len(rows.epochs) == 1 and rows.epochs[0][3] == MAX_BIGINT


def test_run_totals_aggregate_each_run_of_a_batch():
    from esper.nissa.store import run_totals

    t = [NOW + dt.timedelta(seconds=s) for s in range(4)]
    rows = [
        ("e1", "a", "snapshot", "x", 1, t[2], 5, 0, NOW, b""),
        ("e2", "b", "ack", "x", 1, t[1], 7, None, NOW, b""),
        ("e3", "a", "snapshot", "x", 1, t[0], 9, 2, NOW, b""),
        ("e4", "", "heartbeat", "x", 1, t[3], None, None, NOW, b""),  # no run: not counted
        ("e5", "a", "decision", "x", 1, t[3], 4, None, NOW, b""),
    ]
    runs, started, last, steps, epochs, counts = run_totals(rows)
    assert runs == ["a", "b"]
    assert started == [t[0], t[1]] and last == [t[3], t[1]]
    assert steps == [9, 7] and epochs == [2, 0] and counts == [3, 1]
    assert run_totals([]) == ([], [], [], [], [], [])
