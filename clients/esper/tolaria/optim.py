"""Seed parameter groups: every seed trains in its own optimizer param group (its own
learning rate, from the germinate decision's BlendSchedule), added when Kasmina reports the
seed's parameters and removed, optimizer state included, when the seed is culled or merged
into the host on fossilization."""

from __future__ import annotations

import torch
from torch import nn

# Key marking a param group as a seed's (torch keeps extra keys in param groups and in
# the optimizer's state_dict, so the mark survives a checkpoint).
SEED_GROUP_KEY = "esper_slot_id"


def host_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first non-seed group (the host's)."""
    for group in optimizer.param_groups:
        if SEED_GROUP_KEY not in group:
            return float(group["lr"])
    raise ValueError("the optimizer has no host parameter group")


class SeedParamGroups:
    """Keeps one param group per live seed in `optimizer`, following the model's seeds."""

    def __init__(self, model, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        model.seed_added_listeners.append(self.seed_added)
        model.seed_removed_listeners.append(self.seed_removed)

    def seed_slots(self) -> list[str]:
        """Slot ids of the seed groups, in optimizer order."""
        return [g[SEED_GROUP_KEY] for g in self.optimizer.param_groups if SEED_GROUP_KEY in g]

    def seed_added(self, slot, params: list[nn.Parameter]) -> None:
        if not params:
            return
        self.remove(slot.slot_id)
        lr = slot.record.blend_schedule().learning_rate or host_learning_rate(self.optimizer)
        self.optimizer.add_param_group({"params": list(params), "lr": lr,
                                        SEED_GROUP_KEY: slot.slot_id})

    def seed_removed(self, slot, params: list[nn.Parameter]) -> None:
        self.remove(slot.slot_id)

    def remove(self, slot_id: str) -> None:
        """Drop the slot's group and every optimizer state of its parameters."""
        keep = []
        for group in self.optimizer.param_groups:
            if group.get(SEED_GROUP_KEY) == slot_id:
                for p in group["params"]:
                    self.optimizer.state.pop(p, None)
            else:
                keep.append(group)
        self.optimizer.param_groups[:] = keep

    def learning_rate(self, slot_id: str) -> float | None:
        for group in self.optimizer.param_groups:
            if group.get(SEED_GROUP_KEY) == slot_id:
                return float(group["lr"])
        return None
