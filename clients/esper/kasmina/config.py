"""Thresholds of the seed runtime, each with the reason for its value."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Culled slots cool down this long before they may germinate again, when the cull
# decision does not say: long enough that the policy sees fresh health for the slot.
DEFAULT_EMBARGO_STEPS = 100

# A seed in TRAINING must learn for at least this many steps before G2 when the
# decision's schedule does not say: fewer steps give no trend to judge.
DEFAULT_TRAINING_STEPS = 50

# Default blend ramp length when the schedule does not give one.
DEFAULT_BLEND_STEPS = 100

# Default SHADOWING / PROBATIONARY minimum lengths (G4 / G5).
DEFAULT_SHADOW_STEPS = 20
DEFAULT_PROBATION_STEPS = 20

# How a new seed's entry layer may start (KasminaConfig.seed_init).
SEED_INITS = ("default", "bottleneck")

# Most seeds one layer may stack (slot_depth): deep enough for a long run's growth, small
# enough that a wrapped model's slot list stays readable.
MAX_SLOT_DEPTH = 8


@dataclass(frozen=True)
class KasminaConfig:
    """Gate thresholds and safety limits. Every field says why it has its default."""

    # G2: the seed's linearised loss delta <g, seed_out> (mean per step over the latest
    # snapshot window: the slot's accumulator is read and reset at every safe point) must
    # be below -this: the seed would lower the real loss to first order. The seed trains in
    # TRAINING on exactly this linear objective, so a healthy seed passes almost surely;
    # G2 refuses a seed that cannot find a descent direction at all (dead or NaN-free but
    # gradient-free), not a seed that would overshoot; G3's regression check and the
    # policy's REGRESSION rule judge the real effect once it is blended in.
    # Zero would accept pure noise; a tiny margin keeps float noise out.
    min_seed_improvement: float = 1e-9
    # G3: the loss fed to the gates (Tolaria: a train loss smoothed over ~50 steps) may be
    # at most this fraction worse than when blending began. Its rise over a blend's length
    # with no seed at all reaches 3-5% (99th percentile, digits task), so 5% refuses a
    # seed that really hurts and not one that met a noisy stretch; the same tolerance as
    # Tamiyo's heuristic, so the gate and the policy agree on what a regression is.
    val_regression_tolerance: float = 0.05
    # G4: relative spread (max-min)/mean of the train loss over the shadow window must stay
    # below this: a fully blended seed that makes the loss swing is not stable yet.
    shadow_loss_spread: float = 0.5
    # G5: validation gain over probation (loss at germination - latest) must be >= this.
    # Zero means "no worse than before the seed"; raise it to demand a real gain.
    min_val_gain: float = 0.0
    # Circuit breaker: a train loss above this multiple of the loss when the seed started
    # blending counts as an explosion (normal noise stays well below 3x).
    loss_explosion_factor: float = 3.0
    # Budget: at most this many seeds live (GERMINATED..PROBATIONARY) at once; each live
    # seed costs memory and optimizer state, and overlapping seeds confound attribution.
    max_live_seeds: int = 4
    # Budget: parameters all live and fossilized seeds may add, as a fraction of the host's.
    # 1.0 lets growth double the host: a width seed costs about half the host when it widens
    # the host's largest layer by half, so at 0.5 one widening would spend the whole budget
    # and the budget, not the policy, would end growth. A host's declared residual stream
    # widens within its own limit (ResidualStream.max_width), on top of this room.
    max_seed_param_fraction: float = 1.0
    # Default embargo after a cull (see DEFAULT_EMBARGO_STEPS).
    default_embargo_steps: int = DEFAULT_EMBARGO_STEPS
    # G0/G1: a function-preserving seed's output on the probe must be within this of 0.
    function_preserving_atol: float = 1e-6
    # Seeds that may stack at one layer: with depth d every chosen layer gets d slots,
    # `fc1`, `fc1@2`, ... `fc1@d`, and slot k opens (may germinate) once slot k-1 has
    # fossilized, so the next seed grows on top of the last one's function. With 1 (one
    # seed per layer) growth stops when every layer holds a fossil, whatever the policy
    # would decide; deeper stacks leave that to the policy and the parameter budget.
    slot_depth: int = 1
    # How a new seed's entry layer starts: "default", as its blueprint initialises it, or
    # "bottleneck": its first units along the slot's bottleneck statistic, gathered while
    # the seed is GERMINATED (esper.kasmina.bottleneck; GradMax's rule). Opt-in: measured
    # on the MLP host only (see the README's "Does growth pay?").
    seed_init: str = "default"

    def __post_init__(self) -> None:
        fraction = self.max_seed_param_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) \
                or not math.isfinite(fraction) or fraction <= 0:
            raise ValueError(f"max_seed_param_fraction: {fraction!r} is not a finite number > 0")
        if self.seed_init not in SEED_INITS:
            raise ValueError(f"seed_init: {self.seed_init!r} is not one of {', '.join(SEED_INITS)}")
        depth = self.slot_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_SLOT_DEPTH:
            raise ValueError(f"slot_depth: {self.slot_depth!r} is not an integer in 1..{MAX_SLOT_DEPTH}")
