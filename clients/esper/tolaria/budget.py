"""The growth budget a session sends its policy: the caller's ResourceBudget, tightened to
what Kasmina will actually accept in this process.

Kasmina refuses a germination whose seed parameters would exceed
`KasminaConfig.max_seed_param_fraction` of the host's parameters at its declared stream
width (`MorphableModel.declared_host_params`: one rule, here and in Kasmina). A policy that does not
know that limit keeps proposing the same oversized seed, which Kasmina keeps rejecting, and
the run never grows (measured: on the narrow digits host every germination of the local
heuristic was refused for a whole run). Sending the limit as `max_added_params` lets the
policy pick a seed that fits.

A residual stream's widenings count against `max_added_params` too (Leyline's
ResidualStreamState.params_added), but Kasmina bounds them by the stream's own limit
(max_width), not by the seeds' room. So the limit sent is the seeds' room plus all the
stream may add up to its limit: counted against the room alone, the char host's stream,
widened to its default limit of 1.5x its width, spent 99.7% of the room (24,576 of
24,660 parameters) and no seed but a 48-parameter norm could grow after it
(benchmarks/morphogenesis.py).

The budget must meet the rule of esper.leyline.budget (Tamiyo checks the same one).
"""

from __future__ import annotations

import math

from esper.leyline.budget import budget_problem
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget


def runtime_budget(budget: ResourceBudget | None, host_params: int,
                   max_seed_param_fraction: float, stream_params: int = 0) -> ResourceBudget:
    """A copy of `budget` whose max_added_params is at most Kasmina's limit on growth: its
    seed-parameter cap (`max_seed_param_fraction` of `host_params`, the host's parameters
    at its declared stream width) plus `stream_params`, what the host's residual stream
    may add up to its limit (0, unlimited, becomes that limit). `budget` has passed
    validate_budget (attach checks it before the model is wrapped)."""
    out = ResourceBudget()
    if budget is not None:
        out.CopyFrom(budget)
    if host_params <= 0 or not math.isfinite(max_seed_param_fraction) or max_seed_param_fraction <= 0:
        return out
    cap = int(max_seed_param_fraction * host_params) + max(0, stream_params)
    out.max_added_params = min(out.max_added_params, cap) if out.max_added_params else cap
    return out


def validate_budget(budget: ResourceBudget | None) -> None:
    """Refuse a budget that breaks the shared rule, with ValueError naming the field."""
    problem = budget_problem(budget) if budget is not None else None
    if problem is not None:
        raise ValueError(f"budget.{problem[0]}: {problem[1]}")
