"""Simic's reward: what one decision earned between the snapshot it was made on and the
next decision's snapshot.

    reward = ACCURACY_GAIN   * (val_accuracy' - val_accuracy)
           - PARAM_COST      * (seed_params' - seed_params) / host_params
           - LATENCY_COST    * clip(rise of step time beyond LATENCY_NOISE, 0, LATENCY_CLIP)
           - CULL_PENALTY    * (seeds culled in between)
           - INSTABILITY_PENALTY  if the next state shows NaN/Inf (loss or any seed)
           - REJECTED_PENALTY     if the runtime rejected the decision

Validation accuracy only changes at epoch ends, so most terms are zero for most decisions and
the discount in training (`train.SimicConfig.gamma`) carries an epoch's gain back to the
decisions that led to it. Non-finite inputs count as zero change, never as a reward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import TrainingSnapshot
from esper.leyline.v1.telemetry_pb2 import FieldReport


@dataclass(frozen=True)
class RewardConfig:
    """The coefficients, each with its reason."""

    # Reward per unit of validation accuracy gained: x10 puts one accuracy point (0.01) at 0.1,
    # the scale of the costs below, so no term drowns the others.
    accuracy_gain: float = 10.0
    # Cost of adding the host's own parameter count once (a seed with 10% of the host's
    # params costs 0.05, i.e. it must buy half an accuracy point to pay for itself).
    param_cost: float = 0.5
    # Cost of a relative step-time increase; small, because step time on a shared CPU is noisy.
    latency_cost: float = 0.05
    # A relative step-time increase above this is clipped (one slow step is not a seed's fault).
    latency_clip: float = 1.0
    # Relative step-time rises below this are timing noise of a shared machine, not cost.
    latency_noise: float = 0.25
    # Each culled seed: the compute spent growing it is lost and the host was disturbed.
    cull_penalty: float = 0.05
    # NaN/Inf in the loss or a seed: the worst outcome short of a crash.
    instability_penalty: float = 0.5
    # The runtime refused the decision (illegal or unaffordable): a wasted decision.
    rejected_penalty: float = 0.02

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class RewardTerms:
    """Each term's signed contribution, so a reward can be explained."""

    accuracy: float = 0.0
    params: float = 0.0
    latency: float = 0.0
    culls: float = 0.0
    instability: float = 0.0
    rejected: float = 0.0

    @property
    def total(self) -> float:
        return self.accuracy + self.params + self.latency + self.culls + self.instability + self.rejected


def _delta(after: float, before: float) -> float:
    return after - before if math.isfinite(after) and math.isfinite(before) else 0.0


def _unstable(snapshot: TrainingSnapshot) -> bool:
    m = snapshot.metrics
    if not math.isfinite(m.train_loss):
        return True
    return any(s.metrics.non_finite_count for s in snapshot.seeds)


def reward_terms(
    state: TrainingSnapshot,
    next_state: TrainingSnapshot | None,
    decision: AdaptationDecision,
    ack: DecisionAck | None,
    reports: list[FieldReport],
    host_params: int,
    config: RewardConfig,
) -> RewardTerms:
    """The reward of `decision`; `next_state` None means the run ended with no later snapshot
    (then only the penalties apply), `reports` are the field reports seen in between."""
    culled = sum(1 for r in reports if r.final_stage == SeedStage.SEED_STAGE_CULLED)
    rejected = ack is not None and ack.status == AckStatus.ACK_STATUS_REJECTED
    accuracy = params = latency = 0.0
    instability = False
    if next_state is not None:
        accuracy = config.accuracy_gain * _delta(next_state.metrics.val_accuracy, state.metrics.val_accuracy)
        added = float(next_state.resources.seed_params) - float(state.resources.seed_params)
        params = -config.param_cost * added / max(1, host_params)
        before, after = state.resources.step_time_ms, next_state.resources.step_time_ms
        if math.isfinite(before) and math.isfinite(after) and before > 0:
            rise = min(config.latency_clip, max(0.0, (after - before) / before - config.latency_noise))
            latency = -config.latency_cost * rise
        instability = _unstable(next_state)
    return RewardTerms(
        accuracy=accuracy,
        params=params,
        latency=latency,
        culls=-config.cull_penalty * culled,
        instability=-config.instability_penalty if instability else 0.0,
        rejected=-config.rejected_penalty if rejected else 0.0,
    )
