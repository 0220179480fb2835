"""Building AdaptationDecisions: ids, expiry, confidence and rationale in one place."""

from __future__ import annotations

import math
import time

from google.protobuf.timestamp_pb2 import Timestamp

from esper.leyline.ids import new_decision_id
from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    AdvanceAction,
    CullAction,
    FossilizeAction,
    GerminateAction,
    WaitAction,
    WidenStreamAction,
)
from esper.policy.context import PolicyContext

Action = GerminateAction | AdvanceAction | CullAction | FossilizeAction | WaitAction | WidenStreamAction

_ACTION_FIELD = {
    GerminateAction: "germinate",
    AdvanceAction: "advance",
    CullAction: "cull",
    FossilizeAction: "fossilize",
    WaitAction: "wait",
    WidenStreamAction: "widen_stream",
}
# Actions that name no slot.
_SLOTLESS = frozenset({None, "wait", "widen_stream"})


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def make_decision(
    ctx: PolicyContext,
    action: Action,
    *,
    policy_version: str,
    horizon_steps: int,
    confidence: float,
    rationale: str,
    uncertainty: float = 0.0,
) -> AdaptationDecision:
    """A decision for the context's step, expiring `horizon_steps` later."""
    issued = Timestamp()
    issued.FromNanoseconds(time.time_ns())  # GetCurrentTime goes through datetime: 4x slower
    decision = AdaptationDecision(
        decision_id=new_decision_id(),
        run_id=ctx.run_id,
        issued_at_step=ctx.step,
        expires_at_step=ctx.step + horizon_steps,
        issued_at=issued,
        confidence=_clip01(confidence),
        uncertainty=uncertainty if math.isfinite(uncertainty) and uncertainty > 0 else 0.0,
        rationale=rationale,
        policy_version=policy_version,
    )
    getattr(decision, _ACTION_FIELD[type(action)]).CopyFrom(action)
    return decision


def action_slot(decision: AdaptationDecision) -> str | None:
    """The slot a decision acts on, or None for a wait or a widening of the stream."""
    kind = decision.WhichOneof("action")
    return None if kind in _SLOTLESS else getattr(decision, kind).slot_id
