"""Checkpointing every seed's state as plain data (dicts of primitives, bytes and
tensors; loadable with torch.load(weights_only=True), never pickling custom classes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from esper.kasmina.record import SeedRecord
from esper.kasmina.slot import SeedSlot
from esper.kasmina.wrap import MorphableModel
from esper.leyline.v1.control_pb2 import GerminateAction

STATE_VERSION = 1
# Rebuilds an empty seed of the right structure for a slot from its record.
SeedRebuilder = Callable[[SeedSlot, SeedRecord], nn.Module]


def kasmina_state(model: MorphableModel, applied_decisions: set[str] | None = None) -> dict:
    """Every slot's record and seed weights, plus the step counters."""
    slots = {}
    for slot in model.slots.values():
        seed = {k: v.detach().cpu().clone() for k, v in slot.seed.state_dict().items()} \
            if slot.seed is not None else {}
        slots[slot.slot_id] = {"record": slot.record.to_dict(), "seed": seed}
    state = {
        "version": STATE_VERSION, "global_step": model.global_step, "epoch": model.epoch,
        "slots": slots, "applied_decisions": sorted(applied_decisions or ()),
    }
    if model.stream is not None:
        state["stream"] = model.stream.state_dict()
    return state


def builder_rebuilder(build_seed) -> SeedRebuilder:
    """A SeedRebuilder that rebuilds through a SeedBuilder from the record's refs."""

    def rebuild(slot: SeedSlot, rec: SeedRecord) -> nn.Module:
        action = GerminateAction(slot_id=slot.slot_id, blueprint_ref=rec.blueprint_ref,
                                 kernel_id=rec.kernel_id, kernel_sha256=rec.kernel_digest)
        return build_seed(action, slot.shape, slot.device, slot.dtype)

    return rebuild


def load_kasmina_state(model: MorphableModel, state: dict, rebuild: SeedRebuilder) -> list[str]:
    """Restore what kasmina_state saved (before model.load_state_dict, if both are used).
    Returns the applied decision ids saved with it."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"kasmina state version {state.get('version')!r} is not supported "
                         f"(expected {STATE_VERSION})")
    unknown = set(state["slots"]) - set(model.slots)
    if unknown:
        raise ValueError(f"checkpoint has slots this model lacks: {sorted(unknown)}")
    _restore_stream(model, state.get("stream"))
    model.global_step = int(state["global_step"])
    model.epoch = int(state["epoch"])
    for slot_id, saved in state["slots"].items():
        _restore_slot(model.slot(slot_id), saved, rebuild)
    model.refresh_live()  # restored records changed stages without transitions
    return list(state.get("applied_decisions", []))


def _restore_stream(model: MorphableModel, saved: dict | None) -> None:
    """Widen the host's residual stream to the saved width (before its weights are loaded:
    only the shapes matter, load_state_dict sets the values), while every slot is still
    as attached."""
    site = model.stream
    if saved is None or site is None:
        if saved is not None:
            raise ValueError("checkpoint widened a residual stream this model does not declare")
        return
    grow = int(saved["width"]) - site.width
    if grow < 0:
        raise ValueError(f"checkpoint's residual stream is {saved['width']} wide, this model's "
                         f"already {site.width}")
    if grow:
        model.widen_stream(grow)
    site.load_history(saved)


def _restore_slot(slot: SeedSlot, saved: dict, rebuild: SeedRebuilder) -> None:
    rec = SeedRecord.from_dict(dict(saved["record"]))
    slot.remove_hook()
    old = slot.seed_parameters()
    slot.seed = None
    if old:
        slot._events.seed_removed(slot, old)
    slot.record = rec  # before seed_added: its listeners read the seed's schedule
    if saved["seed"]:
        seed = rebuild(slot, rec).to(device=slot.device)
        seed.load_state_dict(saved["seed"])
        slot.seed = seed
        slot._events.seed_added(slot, slot.seed_parameters())
    slot.alpha_t.fill_(rec.alpha)
    slot._reset_accumulators()
    slot.install_hook()


def drop_from_optimizer(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    """Remove `params` (a culled seed's) from every param group and the optimizer state;
    returns how many were removed. Empty groups are dropped."""
    ids = {id(p) for p in params}
    removed = 0
    for group in optimizer.param_groups:
        keep = [p for p in group["params"] if id(p) not in ids]
        removed += len(group["params"]) - len(keep)
        group["params"] = keep
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for p in params:
        optimizer.state.pop(p, None)
    return removed
