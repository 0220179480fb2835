"""The rule a ResourceBudget must meet, one definition: Tolaria checks it at attach and
Tamiyo when a session opens or a Decide request arrives (INVALID_ARGUMENT naming the
field), so a local run and a remote one refuse the same budgets."""

from __future__ import annotations

import math

from esper.leyline.v1.tamiyo_pb2 import ResourceBudget


def budget_problem(budget: ResourceBudget) -> tuple[str, str] | None:
    """(field, why) for the first field of `budget` that breaks the rule, or None."""
    if not math.isfinite(budget.max_seed_latency_ms) or budget.max_seed_latency_ms < 0:
        return "max_seed_latency_ms", "must be finite and >= 0"
    if not math.isfinite(budget.max_risk) or not 0 <= budget.max_risk <= 1:
        return "max_risk", "must be within [0, 1]"
    if not math.isfinite(budget.max_training_flops) or budget.max_training_flops < 0:
        return "max_training_flops", "must be finite and >= 0"
    if budget.max_training_flops > 0 and budget.planned_steps == 0:
        # The projection needs a horizon: without one every germination would look free.
        return "planned_steps", "must be > 0 when max_training_flops is set"
    return None
