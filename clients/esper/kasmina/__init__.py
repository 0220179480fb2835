"""Kasmina: the seed runtime inside any PyTorch model.

    model = esper.kasmina.wrap(my_model, example_input=x)   # slots after eligible layers
    applier = DecisionApplier(model, BlueprintSeedBuilder())
    each step:  loss.backward(); opt.step(); model.seed_step(); opt.zero_grad()
    safe point: model.safe_point(loss); applier.apply(decision)  -> DecisionAck

See wrap.py for the state_dict key scheme and hooks.py for what each stage computes.
"""

from esper.kasmina.cache import KernelCache, KernelDigestMismatch, KernelFetchError
from esper.kasmina.config import KasminaConfig
from esper.kasmina.decisions import DecisionApplier
from esper.kasmina.health import HealthMonitor
from esper.kasmina.seeds import BlueprintSeedBuilder, SeedBuildError
from esper.kasmina.slot import GateRefused, SeedSlot
from esper.kasmina.state import drop_from_optimizer, kasmina_state, load_kasmina_state
from esper.kasmina.stream import ResidualStream
from esper.kasmina.wrap import MorphableModel, wrap

__all__ = [
    "BlueprintSeedBuilder", "DecisionApplier", "GateRefused", "HealthMonitor", "KasminaConfig",
    "KernelCache", "KernelDigestMismatch", "KernelFetchError", "MorphableModel", "ResidualStream", "SeedBuildError",
    "SeedSlot", "drop_from_optimizer", "kasmina_state", "load_kasmina_state", "wrap",
]
