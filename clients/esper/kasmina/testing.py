"""Helpers for tests and benchmarks that need a seed in a late stage without training one.

`force_fossilize` walks a slot through the real lifecycle (every transition goes through
the gates) with hand-set gate measurements: a seed that improved the loss, a finished
blend, and stages held long enough. Never for production training: the measurements are
made up."""

from __future__ import annotations

from torch import nn

from esper.kasmina.slot import SeedSlot
from esper.leyline.v1 import lifecycle_pb2

# Steps in a stage and blend steps large enough for every gate's minimum.
_LONG_ENOUGH = 10**6


def force_fossilize(slot: SeedSlot, seed: nn.Module) -> None:
    """Germinate `seed` in the dormant `slot` and advance it to FOSSILIZED."""
    slot.germinate(seed, step=0, function_preserving=False)
    slot.advance(0)  # GERMINATED -> TRAINING
    record = slot.record
    record.seed_improvement, record.steps_in_stage = -1.0, _LONG_ENOUGH
    slot.advance(0)  # TRAINING -> BLENDING (G2: the seed lowered the loss)
    slot._set_alpha_step(_LONG_ENOUGH)  # the blend is complete
    slot.advance(0, loss=1.0)  # BLENDING -> SHADOWING
    record.steps_in_stage = _LONG_ENOUGH
    slot.advance(0, loss=1.0)  # SHADOWING -> PROBATIONARY
    record.steps_in_stage = _LONG_ENOUGH
    slot.advance(0, loss=1.0)  # PROBATIONARY -> FOSSILIZED
    if slot.stage != lifecycle_pb2.SEED_STAGE_FOSSILIZED:
        stage = lifecycle_pb2.SeedStage.Name(slot.stage)
        raise RuntimeError(f"force_fossilize: the slot stopped at {stage}")
