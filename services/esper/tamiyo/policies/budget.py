"""Budget accounting: what growth the run has used and whether a kernel still fits."""

from __future__ import annotations

from esper.leyline.lifecycle import LIVE_STAGES
from esper.leyline.v1.blueprint_pb2 import BlueprintSpec
from esper.leyline.v1.kernel_pb2 import KernelState
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import SlotInfo
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.tamiyo.policies.context import PolicyContext

# Risk limit when neither the budget nor the policy config sets one: blueprints above it
# are considered too likely to destabilise training to germinate unattended.
DEFAULT_MAX_RISK = 0.5

# Stages whose seeds' parameters count against max_added_params: live seeds and the ones
# merged into the host for good.
PARAM_COUNTED_STAGES = LIVE_STAGES | {SeedStage.SEED_STAGE_FOSSILIZED}


def params_used(ctx: PolicyContext) -> int:
    """Parameters seeds have added so far (the larger of the process's own count and the
    sum over seed states, so neither an old snapshot nor a missing seed under-counts)."""
    from_seeds = sum(s.metrics.params for s in ctx.seeds.values() if s.stage in PARAM_COUNTED_STAGES)
    return max(int(ctx.snapshot.resources.seed_params), int(from_seeds))


def params_left(ctx: PolicyContext) -> int | None:
    """Parameters still affordable, or None when unlimited."""
    limit = ctx.budget.max_added_params
    return None if limit == 0 else max(0, limit - params_used(ctx))


def max_risk(ctx: PolicyContext, policy_default: float = DEFAULT_MAX_RISK) -> float:
    return ctx.budget.max_risk if ctx.budget.max_risk > 0 else policy_default


def rejection_reason(
    candidate: KernelCandidate, slot: SlotInfo, ctx: PolicyContext, risk_limit: float
) -> str | None:
    """Why `candidate` may not be germinated in `slot` now, or None when it may."""
    kernel, spec, stats, budget = candidate.kernel, candidate.blueprint, candidate.kernel.stats, ctx.budget
    if not kernel.kernel_id or not kernel.sha256:
        return "kernel has no id or digest"
    if kernel.state not in (KernelState.KERNEL_STATE_VALID,):
        return f"kernel {kernel.kernel_id} is not VALID"
    left = params_left(ctx)
    if left is not None and stats.params > left:
        return f"kernel {kernel.kernel_id} adds {stats.params} params, {left} left in budget"
    checks = (
        (budget.max_seed_flops, stats.flops, "flops"),
        (budget.max_seed_latency_ms, stats.latency_p99_ms, "latency p99 ms"),
        (budget.max_seed_memory_bytes, stats.peak_memory_bytes, "peak memory bytes"),
    )
    for limit, value, name in checks:
        if limit and value > limit:
            return f"kernel {kernel.kernel_id} {name} {value} exceeds the budget {limit}"
    if spec.metadata.risk_score > risk_limit:
        return f"blueprint {blueprint_ref(spec)} risk {spec.metadata.risk_score:.2f} > {risk_limit:.2f}"
    missing = set(spec.metadata.requires_capability) - set(ctx.capabilities.tags)
    if missing:
        return f"blueprint {blueprint_ref(spec)} needs capabilities {sorted(missing)}"
    if spec.slot_kinds and slot.shape.kind and slot.shape.kind not in spec.slot_kinds:
        return f"blueprint {blueprint_ref(spec)} does not fit slot kind {slot.shape.kind}"
    return None


def blueprint_ref(spec: BlueprintSpec) -> str:
    return f"{spec.name}@{spec.version}"


def affordable(
    candidates: list[KernelCandidate], slot: SlotInfo, ctx: PolicyContext, risk_limit: float
) -> tuple[list[KernelCandidate], list[str]]:
    """Split candidates into the affordable ones and the reasons the others were refused."""
    ok: list[KernelCandidate] = []
    refused: list[str] = []
    for candidate in candidates:
        reason = rejection_reason(candidate, slot, ctx, risk_limit)
        (refused.append(reason) if reason else ok.append(candidate))
    return ok, refused
