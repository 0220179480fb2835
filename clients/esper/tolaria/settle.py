"""Settling the seeds still live when training ends, so the final model is well defined.

A seed still GERMINATED, TRAINING, BLENDING, SHADOWING or PROBATIONARY when the run ends
is taken through its remaining gates at once, with the measurements it has: it is
fossilized if every gate passes, and culled (CULL_REASON_NO_GAIN, "the run ended: ...")
at the first gate that refuses. The gates hold a seed to the minimum steps of each stage,
so in practice a seed that finished its probation is fossilized (the policy had not yet
said so) and any seed still on its way is culled: the final model holds only seeds that
passed every gate, and `unwrap()` has no live seed to leave out.
"""

from __future__ import annotations

from esper.kasmina import GateRefused
from esper.leyline import lifecycle
from esper.leyline.v1.control_pb2 import CullReason


def settle_seeds(model, loss: float | None) -> None:
    """Fossilize or cull every live seed of the MorphableModel `model` at its current step
    (`loss`: the loss the gates see, as at a safe point)."""
    step = model.global_step
    for slot in model.slots.values():
        while slot.is_live():
            try:
                slot.advance(step, lifecycle.next_stage(slot.stage), loss)
            except (GateRefused, lifecycle.IllegalTransition) as exc:
                slot.cull(step, CullReason.CULL_REASON_NO_GAIN, f"the run ended: {exc}")
