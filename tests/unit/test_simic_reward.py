"""Each reward term on hand-made transitions."""

from __future__ import annotations

import math

import pytest

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck, WaitAction
from esper.leyline.v1.lifecycle_pb2 import SeedMetrics, SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import ResourceState, TrainingMetrics, TrainingSnapshot
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.tamiyo.simic.reward import RewardConfig, reward_terms

HOST = 10_000
CFG = RewardConfig()
WAIT = AdaptationDecision(decision_id="d", wait=WaitAction(steps=1))


def snap(acc: float = 0.5, seed_params: int = 0, step_ms: float = 2.0, loss: float = 1.0,
         non_finite: int = 0) -> TrainingSnapshot:
    seeds = [SeedState(slot_id="s0", stage=SeedStage.SEED_STAGE_TRAINING,
                       metrics=SeedMetrics(non_finite_count=non_finite))] if non_finite else []
    return TrainingSnapshot(metrics=TrainingMetrics(val_accuracy=acc, train_loss=loss), seeds=seeds,
                            resources=ResourceState(seed_params=seed_params, step_time_ms=step_ms))


def terms(before, after, ack=None, reports=()):
    return reward_terms(before, after, WAIT, ack, list(reports), HOST, CFG)


def test_accuracy_gain_is_scaled() -> None:
    t = terms(snap(0.50), snap(0.52))
    assert t.accuracy == pytest.approx(CFG.accuracy_gain * 0.02)
    assert t.total == pytest.approx(t.accuracy)


def test_nan_accuracy_counts_as_no_change() -> None:
    assert terms(snap(math.nan), snap(0.9)).accuracy == 0.0


def test_parameter_cost_is_relative_to_the_host() -> None:
    t = terms(snap(seed_params=0), snap(seed_params=1000))
    assert t.params == pytest.approx(-CFG.param_cost * 0.1)


def test_latency_noise_is_free_and_rises_beyond_it_cost() -> None:
    assert terms(snap(step_ms=2.0), snap(step_ms=2.4)).latency == 0.0  # +20% < noise band
    t = terms(snap(step_ms=2.0), snap(step_ms=3.0))  # +50%
    assert t.latency == pytest.approx(-CFG.latency_cost * (0.5 - CFG.latency_noise))
    assert terms(snap(step_ms=1.0), snap(step_ms=100.0)).latency == pytest.approx(-CFG.latency_cost * CFG.latency_clip)


def test_culls_instability_and_rejections_are_penalised() -> None:
    culled = FieldReport(final_stage=SeedStage.SEED_STAGE_CULLED)
    fossil = FieldReport(final_stage=SeedStage.SEED_STAGE_FOSSILIZED)
    assert terms(snap(), snap(), reports=[culled, culled, fossil]).culls == pytest.approx(-2 * CFG.cull_penalty)
    assert terms(snap(), snap(non_finite=3)).instability == -CFG.instability_penalty
    assert terms(snap(), snap(loss=math.inf)).instability == -CFG.instability_penalty
    rejected = DecisionAck(decision_id="d", status=AckStatus.ACK_STATUS_REJECTED)
    applied = DecisionAck(decision_id="d", status=AckStatus.ACK_STATUS_APPLIED)
    assert terms(snap(), snap(), ack=rejected).rejected == -CFG.rejected_penalty
    assert terms(snap(), snap(), ack=applied).rejected == 0.0


def test_last_decision_only_pays_penalties() -> None:
    rejected = DecisionAck(decision_id="d", status=AckStatus.ACK_STATUS_REJECTED)
    t = terms(snap(0.1), None, ack=rejected)
    assert t.total == pytest.approx(-CFG.rejected_penalty)
