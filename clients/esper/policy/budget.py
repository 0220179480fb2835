"""Budget accounting: what growth the run has used and whether a kernel still fits."""

from __future__ import annotations

import math

from esper.leyline.lifecycle import LIVE_STAGES
from esper.leyline.v1.blueprint_pb2 import BlueprintSpec
from esper.leyline.v1.kernel_pb2 import KernelState
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import SlotInfo
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy.context import PolicyContext

# Risk limit when neither the budget nor the policy config sets one: blueprints above it
# are considered too likely to destabilise training to germinate unattended.
DEFAULT_MAX_RISK = 0.5

# Stages whose seeds' parameters count against max_added_params: live seeds and the ones
# merged into the host for good.
PARAM_COUNTED_STAGES = LIVE_STAGES | {SeedStage.SEED_STAGE_FOSSILIZED}


def params_used(ctx: PolicyContext) -> int:
    """Parameters growth has added so far: the seeds' (the larger of the process's own count
    and the sum over seed states, so neither an old snapshot nor a missing seed
    under-counts) and a widened residual stream's."""
    from_seeds = sum(s.metrics.params for s in ctx.seeds.values() if s.stage in PARAM_COUNTED_STAGES)
    seeds = max(int(ctx.snapshot.resources.seed_params), int(from_seeds))
    return seeds + int(ctx.snapshot.stream.params_added)


def params_left(ctx: PolicyContext) -> int | None:
    """Parameters still affordable, or None when unlimited."""
    limit = ctx.budget.max_added_params
    return None if limit == 0 else max(0, limit - params_used(ctx))


def training_flops_left(ctx: PolicyContext) -> tuple[float, float] | None:
    """(training FLOPs the budget leaves for growth, training FLOPs the remaining planned
    steps spend per forward FLOP a kernel adds to one example) when the run has a
    training-FLOPs budget, else None.

    The run's projected total without more growth is what it spent plus every remaining
    planned step at its current step cost; a kernel whose forward FLOPs are a share `s` of
    the model's raises each remaining step's cost by `s` times it (a seed's backward
    scales with its forward, as the host's does). Unmeasured FLOPs give (NaN, NaN): a
    budget that cannot be checked refuses growth rather than letting it overrun."""
    b, r = ctx.budget, ctx.snapshot.resources
    if b.max_training_flops <= 0:
        return None
    if r.training_flops_per_step <= 0 or r.model_flops_per_example <= 0:
        return math.nan, math.nan
    remaining = max(int(b.planned_steps) - ctx.step, 0)
    projected = r.training_flops + remaining * r.training_flops_per_step
    per_kernel_flop = remaining * r.training_flops_per_step / r.model_flops_per_example
    return b.max_training_flops - projected, per_kernel_flop


def max_risk(ctx: PolicyContext, policy_default: float = DEFAULT_MAX_RISK) -> float:
    return ctx.budget.max_risk if ctx.budget.max_risk > 0 else policy_default


# Plain ints: protobuf enum attribute lookups are slow on hot paths.
_VALID = int(KernelState.KERNEL_STATE_VALID)


class BudgetCheck:
    """Whether kernels fit the run's budget now; built once per decision (the used budget,
    risk limit and capabilities are computed once, then each candidate is cheap)."""

    def __init__(self, ctx: PolicyContext, risk_limit: float) -> None:
        b = ctx.budget
        self.params_left = params_left(ctx)
        self.training = training_flops_left(ctx)
        self.risk_limit = risk_limit
        self.capabilities = frozenset(ctx.capabilities.tags)
        self.limits = (
            (b.max_seed_flops, "flops"),
            (b.max_seed_latency_ms, "latency p99 ms"),
            (b.max_seed_memory_bytes, "peak memory bytes"),
        )

    def reason(self, candidate: KernelCandidate, slot: SlotInfo) -> str | None:
        """Why `candidate` may not be germinated in `slot` now, or None when it may."""
        kernel, spec = candidate.kernel, candidate.blueprint
        stats, meta = kernel.stats, spec.metadata
        if not kernel.kernel_id or not kernel.sha256:
            return "kernel has no id or digest"
        if kernel.state != _VALID:
            return f"kernel {kernel.kernel_id} is not VALID"
        if self.params_left is not None and stats.params > self.params_left:
            return f"kernel {kernel.kernel_id} adds {stats.params} params, {self.params_left} left in budget"
        values = (stats.flops, stats.latency_p99_ms, stats.peak_memory_bytes)
        for (limit, name), value in zip(self.limits, values, strict=True):
            if limit and not value <= limit:  # `not <=` also refuses NaN
                return f"kernel {kernel.kernel_id} {name} {value} exceeds the budget {limit}"
        if self.training is not None:
            problem = self._training_flops(kernel)
            if problem:
                return problem
        if not meta.risk_score <= self.risk_limit:
            return f"blueprint {blueprint_ref(spec)} risk {meta.risk_score:.2f} > {self.risk_limit:.2f}"
        missing = set(meta.requires_capability) - self.capabilities
        if missing:
            return f"blueprint {blueprint_ref(spec)} needs capabilities {sorted(missing)}"
        kind = slot.shape.kind
        if kind and spec.slot_kinds and kind not in spec.slot_kinds:
            return f"blueprint {blueprint_ref(spec)} does not fit slot kind {kind}"
        return None

    def _training_flops(self, kernel) -> str | None:
        """Why the kernel would take the run past its training-FLOPs budget, or None."""
        left, per_kernel_flop = self.training
        if math.isnan(left):
            return "training FLOPs are not measured yet: the training-FLOPs budget cannot be checked"
        cost = kernel.stats.flops * per_kernel_flop
        if not cost <= left:  # `not <=` also refuses NaN
            return (f"kernel {kernel.kernel_id} would spend {_giga(cost)} GFLOPs over the remaining "
                    f"planned steps, {_giga(max(left, 0.0))} left in the training-FLOPs budget")
        return None

    def split(self, candidates: list[KernelCandidate], slot: SlotInfo) -> tuple[list[KernelCandidate], list[str]]:
        """The affordable candidates and the reasons the others were refused."""
        ok: list[KernelCandidate] = []
        refused: list[str] = []
        for candidate in candidates:
            reason = self.reason(candidate, slot)
            (refused.append(reason) if reason else ok.append(candidate))
        return ok, refused


def rejection_reason(
    candidate: KernelCandidate, slot: SlotInfo, ctx: PolicyContext, risk_limit: float
) -> str | None:
    """Why `candidate` may not be germinated in `slot` now, or None when it may."""
    return BudgetCheck(ctx, risk_limit).reason(candidate, slot)


def blueprint_ref(spec: BlueprintSpec) -> str:
    return f"{spec.name}@{spec.version}"


def affordable(
    candidates: list[KernelCandidate], slot: SlotInfo, ctx: PolicyContext, risk_limit: float
) -> tuple[list[KernelCandidate], list[str]]:
    """Split candidates into the affordable ones and the reasons the others were refused."""
    return BudgetCheck(ctx, risk_limit).split(candidates, slot)


def _giga(flops: float) -> str:
    return f"{flops / 1e9:,.1f}"
