"""Kasmina: the seed runtime inside any PyTorch model.

    model = esper.kasmina.wrap(my_model)                    # slots after eligible layers
    slot = model.slots["fc1"]
    slot.germinate(seed_module, step=model.global_step)     # or apply_decision(...)
    ... each step: loss.backward(); opt.step(); model.seed_step(); opt.zero_grad()
    ... at safe points: model.safe_point(loss); apply decisions
"""

from esper.kasmina.config import KasminaConfig
from esper.kasmina.slot import GateRefused, SeedSlot
from esper.kasmina.wrap import MorphableModel, wrap

__all__ = ["GateRefused", "KasminaConfig", "MorphableModel", "SeedSlot", "wrap"]
