"""A slot's health score in [0, 1] from its LayerHealth (1 is healthy, 0 is broken).

score = 1 - (w_dead * dead + w_sat * saturated + w_grad * vanishing_gradient) / sum(w),
and 0 outright when the window saw NaN or Inf values. `vanishing_gradient` is how many
decades the gradient norm sits below HEALTHY_GRADIENT_NORM, over VANISHING_DECADES,
clipped to [0, 1]. Dead units and saturation are the capacity a seed can add back; a
vanishing gradient says the layer has stopped learning. A slot without a report is
treated as healthy (no evidence of trouble), so slots with evidence go first.
"""

from __future__ import annotations

import math

from esper.leyline.v1.signals_pb2 import LayerHealth

# Weights of the penalties: dead units are the clearest sign of lost capacity, saturation
# and a vanishing gradient come next.
DEAD_WEIGHT = 0.4
SATURATION_WEIGHT = 0.3
GRADIENT_WEIGHT = 0.3

# A gradient norm at or above this is taken as "learning" (typical per-layer norms of a
# small network with Adam sit around 1e-2 .. 1).
HEALTHY_GRADIENT_NORM = 1e-2
# Three decades below healthy (1e-5) counts as fully vanished.
VANISHING_DECADES = 3.0

# Health of a slot nothing was reported for.
UNREPORTED_HEALTH = 1.0


def _fraction(value: float) -> float:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 1.0


def vanishing_gradient(gradient_norm: float) -> float:
    """0 for a healthy gradient norm, 1 for one VANISHING_DECADES below (or non-finite)."""
    if not math.isfinite(gradient_norm):
        return 1.0
    if gradient_norm <= 0:
        return 1.0
    decades = math.log10(HEALTHY_GRADIENT_NORM / gradient_norm)
    return min(1.0, max(0.0, decades / VANISHING_DECADES))


def health_score(health: LayerHealth | None) -> float:
    """The documented score above; hostile values (NaN, negative) count as unhealthy."""
    if health is None:
        return UNREPORTED_HEALTH
    if health.nan_count or health.inf_count:
        return 0.0
    penalty = (
        DEAD_WEIGHT * _fraction(health.dead_fraction)
        + SATURATION_WEIGHT * _fraction(health.saturated_fraction)
        + GRADIENT_WEIGHT * vanishing_gradient(health.gradient_norm)
    ) / (DEAD_WEIGHT + SATURATION_WEIGHT + GRADIENT_WEIGHT)
    return 1.0 - penalty
