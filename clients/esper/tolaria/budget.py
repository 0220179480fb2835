"""The growth budget a session sends its policy: the caller's ResourceBudget, tightened to
what Kasmina will actually accept in this process.

Kasmina refuses a germination whose seed parameters would exceed
`KasminaConfig.max_seed_param_fraction` of the host's parameters. A policy that does not
know that limit keeps proposing the same oversized seed, which Kasmina keeps rejecting, and
the run never grows (measured: on the narrow digits host every germination of the local
heuristic was refused for a whole run). Sending the limit as `max_added_params` lets the
policy pick a seed that fits.

The budget must meet the rule of esper.leyline.budget (Tamiyo checks the same one).
"""

from __future__ import annotations

import math

from esper.leyline.budget import budget_problem
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget


def runtime_budget(budget: ResourceBudget | None, host_params: int,
                   max_seed_param_fraction: float) -> ResourceBudget:
    """A copy of `budget` whose max_added_params is at most Kasmina's seed-parameter cap
    (0, unlimited, becomes the cap). `budget` has passed validate_budget (attach checks
    it before the model is wrapped)."""
    out = ResourceBudget()
    if budget is not None:
        out.CopyFrom(budget)
    if host_params <= 0 or not math.isfinite(max_seed_param_fraction) or max_seed_param_fraction <= 0:
        return out
    cap = int(max_seed_param_fraction * host_params)
    out.max_added_params = min(out.max_added_params, cap) if out.max_added_params else cap
    return out


def validate_budget(budget: ResourceBudget | None) -> None:
    """Refuse a budget that breaks the shared rule, with ValueError naming the field."""
    problem = budget_problem(budget) if budget is not None else None
    if problem is not None:
        raise ValueError(f"budget.{problem[0]}: {problem[1]}")
