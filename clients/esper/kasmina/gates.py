"""The gates G0-G5: each advance of a seed is guarded by one, which returns a Leyline
GateResult listing every named check it ran (passing or not) and why.

Gates read a `GateInputs` snapshot the slot fills from what it measured; they never
touch tensors themselves, so they are pure and testable on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from esper.kasmina.config import KasminaConfig
from esper.leyline.v1.lifecycle_pb2 import GateCheck, GateLevel, GateResult

NAN = float("nan")


@dataclass
class GateInputs:
    """What the slot measured about its seed, as plain numbers."""

    step: int = 0
    steps_in_stage: int = 0
    # G0 / G1 probe results (filled by the slot's probe run).
    shape_ok: bool = False
    shape_detail: str = ""
    forward_finite: bool = False
    backward_finite: bool = False
    probe_abs_max: float = NAN
    function_preserving_required: bool = False
    # Schedule minimums.
    min_training_steps: int = 0
    min_shadow_steps: int = 0
    min_probation_steps: int = 0
    # Measurements.
    seed_improvement: float = NAN  # mean linearised loss delta <g, seed_out>; < 0 is good
    non_finite_count: int = 0
    alpha: float = 0.0
    loss_at_stage_start: float = NAN  # validation (or train) loss when the stage began
    loss_now: float = NAN
    loss_at_germination: float = NAN
    stage_losses: list[float] = field(default_factory=list)


def _check(name: str, passed: bool, observed: float, threshold: float, detail: str) -> GateCheck:
    return GateCheck(
        name=name, passed=bool(passed), observed=float(observed), threshold=float(threshold),
        detail=detail,
    )


def _result(level: int, step: int, checks: list[GateCheck]) -> GateResult:
    return GateResult(level=level, passed=all(c.passed for c in checks), checks=checks, step=step)


def _min_steps(inputs: GateInputs, minimum: int) -> GateCheck:
    return _check(
        "min_steps", inputs.steps_in_stage >= minimum, inputs.steps_in_stage, minimum,
        f"{inputs.steps_in_stage} steps in stage, {minimum} required",
    )


def _finite_grads(inputs: GateInputs) -> GateCheck:
    return _check(
        "finite_values", inputs.non_finite_count == 0, inputs.non_finite_count, 0,
        f"{inputs.non_finite_count} NaN/Inf values seen in the seed's output or gradients",
    )


def g0_germinate(inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """DORMANT -> GERMINATED: the built seed fits the slot (and preserves the function
    when its blueprint says it does). Kernel digest and budget are checked before build."""
    checks = [_check("shape_contract", inputs.shape_ok, NAN, NAN, inputs.shape_detail)]
    if inputs.function_preserving_required:
        ok = inputs.probe_abs_max <= cfg.function_preserving_atol
        checks.append(_check(
            "function_preserving", ok, inputs.probe_abs_max, cfg.function_preserving_atol,
            f"max |seed(probe)| = {inputs.probe_abs_max:.3g}",
        ))
    return _result(GateLevel.GATE_LEVEL_G0, inputs.step, checks)


def g1_train(inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """GERMINATED -> TRAINING: the seed runs forward and backward with finite values."""
    checks = [
        _check("finite_forward", inputs.forward_finite, NAN, NAN, "seed forward on a probe"),
        _check("finite_backward", inputs.backward_finite, NAN, NAN, "seed backward on a probe"),
    ]
    return _result(GateLevel.GATE_LEVEL_G1, inputs.step, checks)


def g2_blend(inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """TRAINING -> BLENDING: enough steps, the seed would lower the loss, grads finite."""
    improving = (
        not math.isnan(inputs.seed_improvement)
        and inputs.seed_improvement < -cfg.min_seed_improvement
    )
    checks = [
        _min_steps(inputs, inputs.min_training_steps),
        _check(
            "seed_loss_improving", improving, inputs.seed_improvement, -cfg.min_seed_improvement,
            f"linearised loss delta of the seed {inputs.seed_improvement:.3g} "
            f"(< {-cfg.min_seed_improvement:.3g} required)",
        ),
        _finite_grads(inputs),
    ]
    return _result(GateLevel.GATE_LEVEL_G2, inputs.step, checks)


def _no_regression(inputs: GateInputs, tolerance: float) -> GateCheck:
    start, now = inputs.loss_at_stage_start, inputs.loss_now
    if math.isnan(start) or math.isnan(now):
        return _check("no_regression", False, now, NAN, "no loss measured in this stage yet")
    limit = start * (1.0 + tolerance) if start >= 0 else start * (1.0 - tolerance)
    return _check(
        "no_regression", now <= limit, now, limit,
        f"loss {now:.4g} vs {start:.4g} at stage start (tolerance {tolerance:.0%})",
    )


def g3_shadow(inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """BLENDING -> SHADOWING: alpha reached 1 and the loss did not regress."""
    checks = [
        _check("alpha_complete", inputs.alpha >= 1.0, inputs.alpha, 1.0,
               f"alpha {inputs.alpha:.3f}"),
        _no_regression(inputs, cfg.val_regression_tolerance),
        _finite_grads(inputs),
    ]
    return _result(GateLevel.GATE_LEVEL_G3, inputs.step, checks)


def g4_probation(inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """SHADOWING -> PROBATIONARY: enough shadow steps with a stable loss."""
    losses = [x for x in inputs.stage_losses if math.isfinite(x)]
    if losses:
        mean = sum(losses) / len(losses)
        spread = (max(losses) - min(losses)) / abs(mean) if mean else float("inf")
    else:
        spread = NAN
    stable = bool(losses) and spread <= cfg.shadow_loss_spread
    checks = [
        _min_steps(inputs, inputs.min_shadow_steps),
        _check("loss_stable", stable, spread, cfg.shadow_loss_spread,
               f"relative loss spread {spread:.3g} over {len(losses)} windows"),
        _finite_grads(inputs),
    ]
    return _result(GateLevel.GATE_LEVEL_G4, inputs.step, checks)


def g5_fossilize(inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """PROBATIONARY -> FOSSILIZED: the gain since germination holds."""
    before, now = inputs.loss_at_germination, inputs.loss_now
    gain = before - now if not (math.isnan(before) or math.isnan(now)) else NAN
    checks = [
        _min_steps(inputs, inputs.min_probation_steps),
        _check("gain_held", not math.isnan(gain) and gain >= cfg.min_val_gain, gain,
               cfg.min_val_gain, f"loss {before:.4g} at germination -> {now:.4g} now"),
        _finite_grads(inputs),
    ]
    return _result(GateLevel.GATE_LEVEL_G5, inputs.step, checks)


GATE_FUNCTIONS = {
    GateLevel.GATE_LEVEL_G0: g0_germinate,
    GateLevel.GATE_LEVEL_G1: g1_train,
    GateLevel.GATE_LEVEL_G2: g2_blend,
    GateLevel.GATE_LEVEL_G3: g3_shadow,
    GateLevel.GATE_LEVEL_G4: g4_probation,
    GateLevel.GATE_LEVEL_G5: g5_fossilize,
}


def evaluate(level: int, inputs: GateInputs, cfg: KasminaConfig) -> GateResult:
    """Run gate `level` on `inputs`."""
    return GATE_FUNCTIONS[level](inputs, cfg)
