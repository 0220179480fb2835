"""The last line of defence inside Tamiyo: does a decision respect the lifecycle table, the
embargo, the live-seed limit, the budget and the candidate provider? Both policies run
every decision through `violation` and turn a violating one into a wait; Kasmina checks
again on its side."""

from __future__ import annotations

from esper.leyline.lifecycle import is_allowed, next_stage
from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.control_pb2 import AdaptationDecision
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.policy.budget import params_left, rejection_reason
from esper.policy.context import PolicyContext

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2

# Stages a policy may advance with an AdvanceAction. Germination and fossilization have
# their own actions; the failure path (culled -> embargoed -> resetting -> dormant) is the
# runtime's to drive.
ADVANCEABLE_STAGES = frozenset(
    {S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING}
)


def live_seed_limit(ctx: PolicyContext, policy_limit: int) -> int:
    """The tighter of the process's capability and the policy's own limit (0: no limit)."""
    limits = [x for x in (ctx.capabilities.max_live_seeds, policy_limit) if x > 0]
    return min(limits) if limits else 0


def germinate_violation(
    decision: AdaptationDecision, ctx: PolicyContext, risk_limit: float, max_live: int
) -> str | None:
    action = decision.germinate
    slot = next((s for s in ctx.graph.slots if s.slot_id == action.slot_id), None)
    if slot is None:
        return f"germinate names unknown slot {action.slot_id!r}"
    if not is_allowed(ctx.stage_of(slot.slot_id), S.SEED_STAGE_GERMINATED):
        return f"slot {slot.slot_id} is not dormant"
    if ctx.is_embargoed(slot.slot_id):
        return f"slot {slot.slot_id} is embargoed"
    below = ctx.stack_blocker(slot.slot_id)
    if below is not None:
        return f"slot {slot.slot_id} opens once slot {below} below it has fossilized"
    if max_live and ctx.live_seed_count() >= max_live:
        return f"{ctx.live_seed_count()} live seeds already (limit {max_live})"
    offered = [
        c for c in ctx.candidates.candidates(slot, ctx.budget)
        if c.kernel.kernel_id == action.kernel_id and c.kernel.sha256 == action.kernel_sha256
    ]
    if not offered:
        return f"kernel {action.kernel_id!r} was not offered for slot {slot.slot_id}"
    return rejection_reason(offered[0], slot, ctx, risk_limit)


def widen_stream_violation(features: int, ctx: PolicyContext) -> str | None:
    """Why widening the residual stream by `features` must not be sent, or None."""
    if not ctx.snapshot.HasField("stream"):
        return "widen_stream: the host declares no residual stream"
    stream = ctx.snapshot.stream
    multiple = max(1, stream.feature_multiple)
    if features <= 0 or features % multiple:
        return f"widen_stream: features {features} is not a positive multiple of {multiple}"
    if stream.width + features > stream.max_width:
        return f"widen_stream: {stream.width} + {features} exceeds the stream's limit {stream.max_width}"
    if ctx.live_seed_count():
        return f"widen_stream: {ctx.live_seed_count()} live seeds (the stream widens only when none is)"
    left = params_left(ctx)
    cost = features * stream.params_per_feature
    if left is not None and cost > left:
        return f"widen_stream: {cost} parameters, the budget has {left} left"
    return None


def violation(
    decision: AdaptationDecision, ctx: PolicyContext, risk_limit: float, max_live: int
) -> str | None:
    """Why the decision must not be sent, or None when it may."""
    kind = decision.WhichOneof("action")
    if kind is None:
        return "decision carries no action"
    if kind == "wait":
        return None
    if kind == "germinate":
        return germinate_violation(decision, ctx, risk_limit, max_live)
    if kind == "widen_stream":
        return widen_stream_violation(decision.widen_stream.features, ctx)
    slot_id = getattr(decision, kind).slot_id
    if slot_id not in ctx.slot_ids:
        return f"{kind} names unknown slot {slot_id!r}"
    stage = ctx.stage_of(slot_id)
    if kind == "cull":
        ok = is_allowed(stage, S.SEED_STAGE_CULLED)
    elif kind == "fossilize":
        ok = is_allowed(stage, S.SEED_STAGE_FOSSILIZED)
    else:
        target = decision.advance.target_stage
        ok = stage in ADVANCEABLE_STAGES and target == next_stage(stage) and is_allowed(stage, target)
    return None if ok else f"{kind} is illegal for slot {slot_id} in stage {SeedStage.Name(stage)}"
