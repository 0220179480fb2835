"""Helpers for tests and benchmarks that need a seed in a late stage without training one.

`force_fossilize` walks a slot through the real lifecycle (every transition goes through
the gates) with hand-set gate measurements: a seed that improved the loss, a finished
blend, and stages held long enough. Never for production training: the measurements are
made up."""

from __future__ import annotations

from torch import nn

from esper.kasmina.slot import SeedSlot
from esper.leyline.v1 import lifecycle_pb2

S = lifecycle_pb2.SeedStage
# Steps in a stage and blend steps large enough for every gate's minimum.
_LONG_ENOUGH = 10**6


def force_fossilize(slot: SeedSlot, seed: nn.Module) -> None:
    """Germinate `seed` in the dormant `slot` and advance it to FOSSILIZED."""
    slot.germinate(seed, step=0, function_preserving=False)
    force_advance(slot, step=0)


def force_advance(slot: SeedSlot, step: int, until: int = S.SEED_STAGE_FOSSILIZED) -> None:
    """Advance the live seed in `slot` (GERMINATED or later) at `step`, gate by gate, to
    the stage `until` (FOSSILIZED by default)."""
    record = slot.record
    if slot.stage == until:
        return
    if slot.stage == S.SEED_STAGE_GERMINATED:
        slot.advance(step)  # GERMINATED -> TRAINING
    if slot.stage == S.SEED_STAGE_TRAINING and until != slot.stage:
        record.seed_improvement, record.steps_in_stage = -1.0, _LONG_ENOUGH
        slot.advance(step)  # TRAINING -> BLENDING (G2: the seed lowered the loss)
    if slot.stage == S.SEED_STAGE_BLENDING and until != slot.stage:
        slot._set_alpha_step(_LONG_ENOUGH)  # the blend is complete
        slot.advance(step, loss=1.0)  # BLENDING -> SHADOWING
    while slot.stage in (S.SEED_STAGE_SHADOWING, S.SEED_STAGE_PROBATIONARY) \
            and until != slot.stage:  # -> PROBATIONARY -> FOSSILIZED
        record.steps_in_stage = _LONG_ENOUGH
        slot.advance(step, loss=1.0)
    if slot.stage != until:
        raise RuntimeError(f"force_advance: the slot stopped at {S.Name(slot.stage)}")
