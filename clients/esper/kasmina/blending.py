"""The alpha ramp of BLENDING: host + alpha * seed, alpha going 0 -> 1 over N steps."""

from __future__ import annotations

import math

from esper.kasmina.config import (
    DEFAULT_BLEND_STEPS,
    DEFAULT_PROBATION_STEPS,
    DEFAULT_SHADOW_STEPS,
    DEFAULT_TRAINING_STEPS,
)
from esper.leyline.v1.control_pb2 import BlendCurve, BlendSchedule


def alpha_at(curve: int, step: int, blend_steps: int) -> float:
    """Alpha after `step` blending steps of a `blend_steps` ramp (clamped to [0, 1])."""
    if blend_steps <= 0:
        raise ValueError(f"blend_steps must be > 0, got {blend_steps}")
    t = min(max(step, 0), blend_steps) / blend_steps
    if curve == BlendCurve.BLEND_CURVE_COSINE:
        return (1.0 - math.cos(math.pi * t)) / 2.0
    if curve in (BlendCurve.BLEND_CURVE_LINEAR, BlendCurve.BLEND_CURVE_UNSPECIFIED):
        return t
    raise ValueError(f"unknown blend curve {curve}")


def with_defaults(schedule: BlendSchedule | None) -> BlendSchedule:
    """A copy of `schedule` with every unset (zero) length replaced by its default."""
    out = BlendSchedule()
    if schedule is not None:
        out.CopyFrom(schedule)
    if out.curve == BlendCurve.BLEND_CURVE_UNSPECIFIED:
        out.curve = BlendCurve.BLEND_CURVE_LINEAR
    out.blend_steps = out.blend_steps or DEFAULT_BLEND_STEPS
    out.training_steps = out.training_steps or DEFAULT_TRAINING_STEPS
    out.shadow_steps = out.shadow_steps or DEFAULT_SHADOW_STEPS
    out.probation_steps = out.probation_steps or DEFAULT_PROBATION_STEPS
    return out
