"""Seed parameter groups: every seed trains in its own optimizer param group, added when
Kasmina reports the seed's parameters and removed, optimizer state included, when the
seed is culled or merged into the host on fossilization.

Learning rate of a seed group:
- by default it follows the host's schedule: it starts at the host group's current rate
  and is registered with every learning-rate scheduler of the optimizer as a copy of the
  host group (esper.tolaria.schedulers), so each scheduler step moves it as it moves the
  host's;
- with `TolariaConfig.seed_lr = "rewarm"` it follows the host's schedule from a rewarmed
  start: a seed germinated after the schedule has decayed starts at the host's initial
  rate (the `initial_lr` a scheduler keeps in the group) and is registered with the
  schedulers as a copy of the host group with every rate scaled by the same factor, so
  each scheduler step moves it as it moves the host's, from higher up. Under a cosine
  schedule a late seed then gets a short cosine of its own, from the peak rate to the
  end of training, instead of training at the tail's small rates. Where the host has not
  decayed (no scheduler, a warm-up), the factor is 1 and the seed follows;
- when the germinate decision sets its own rate (BlendSchedule.learning_rate > 0), the
  group trains at that rate for the seed's whole life: it is registered with the
  schedulers too (so they keep working), but its rate is put back before every optimizer
  step, whatever they computed.
"""

from __future__ import annotations

import torch
from torch import nn

from esper.tolaria.schedulers import (
    register_group,
    reorder_groups,
    scheduler_keys,
    unregister_group,
)

# Key marking a param group as a seed's (torch keeps extra keys in param groups and in
# the optimizer's state_dict, so the mark survives a checkpoint).
SEED_GROUP_KEY = "esper_slot_id"


def host_group_index(optimizer: torch.optim.Optimizer) -> int:
    """Index of the first non-seed param group (the host's)."""
    for i, group in enumerate(optimizer.param_groups):
        if SEED_GROUP_KEY not in group:
            return i
    raise ValueError("the optimizer has no host parameter group")


def host_learning_rate(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate of the first non-seed group (the host's)."""
    return float(optimizer.param_groups[host_group_index(optimizer)]["lr"])


class SeedParamGroups:
    """Keeps one param group per live seed in `optimizer`, following the model's seeds,
    and the optimizer's learning-rate schedulers in step with them."""

    def __init__(self, model, optimizer: torch.optim.Optimizer, rule: str = "follow") -> None:
        self.optimizer = optimizer
        self.rule = rule  # TolariaConfig.seed_lr
        self.own_rates: dict[str, float] = {}  # slot id -> the rate its decision set
        self._pin_handle = None
        model.seed_added_listeners.append(self.seed_added)
        model.seed_removed_listeners.append(self.seed_removed)

    def seed_slots(self) -> list[str]:
        """Slot ids of the seed groups, in optimizer order."""
        return [g[SEED_GROUP_KEY] for g in self.optimizer.param_groups if SEED_GROUP_KEY in g]

    def seed_added(self, slot, params: list[nn.Parameter]) -> None:
        if not params:
            return
        self.remove(slot.slot_id)
        host = host_group_index(self.optimizer)
        host_group = self.optimizer.param_groups[host]
        own = slot.record.blend_schedule().learning_rate
        scale = self._start_scale(host_group) if not own else 1.0
        group = {**scheduler_keys(host_group, scale), "params": list(params),
                 "lr": own or host_group["lr"] * scale, SEED_GROUP_KEY: slot.slot_id}
        self.optimizer.add_param_group(group)
        register_group(self.optimizer, host, scale)
        if own:
            self.own_rates[slot.slot_id] = float(own)
            self._pin()

    def _start_scale(self, host_group: dict) -> float:
        """The factor between a new seed group's rates and the host's: 1 to follow, and
        for "rewarm" what lifts the host's current rate back to its initial one (never
        below 1; 1 when the host has no initial rate or a rate of 0)."""
        current, initial = host_group["lr"], host_group.get("initial_lr")
        if self.rule != "rewarm" or not initial or current <= 0:
            return 1.0
        return max(1.0, float(initial) / float(current))

    def seed_removed(self, slot, params: list[nn.Parameter]) -> None:
        self.remove(slot.slot_id)

    def remove(self, slot_id: str) -> None:
        """Drop the slot's group, its scheduler entries and every optimizer state of its
        parameters."""
        self.own_rates.pop(slot_id, None)
        self._pin()
        groups = self.optimizer.param_groups
        for index in reversed(range(len(groups))):
            if groups[index].get(SEED_GROUP_KEY) == slot_id:
                unregister_group(self.optimizer, index)
                for p in groups[index]["params"]:
                    self.optimizer.state.pop(p, None)
                del groups[index]

    def reorder(self, slot_order: list[str]) -> None:
        """Host groups first, then the seed groups in `slot_order` (a checkpoint's)."""
        groups = self.optimizer.param_groups
        seeds = {g[SEED_GROUP_KEY]: i for i, g in enumerate(groups) if SEED_GROUP_KEY in g}
        if set(seeds) != set(slot_order):
            raise ValueError(f"seed param groups {sorted(seeds)} do not match "
                             f"{sorted(slot_order)}")
        host = [i for i, g in enumerate(groups) if SEED_GROUP_KEY not in g]
        reorder_groups(self.optimizer, host + [seeds[s] for s in slot_order])

    def learning_rate(self, slot_id: str) -> float | None:
        for group in self.optimizer.param_groups:
            if group.get(SEED_GROUP_KEY) == slot_id:
                return float(group["lr"])
        return None

    # ---- own rates -------------------------------------------------------------------------
    def _pin(self) -> None:
        """Hold the own-rate groups at their rate before each optimizer step (a step
        pre-hook, installed only while there is such a group)."""
        if self.own_rates and self._pin_handle is None:
            self._pin_handle = self.optimizer.register_step_pre_hook(self._restore_own_rates)
        elif not self.own_rates and self._pin_handle is not None:
            self._pin_handle.remove()
            self._pin_handle = None

    def _restore_own_rates(self, optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            rate = self.own_rates.get(group.get(SEED_GROUP_KEY))
            if rate is not None:
                group["lr"] = rate


def swap_parameters(optimizer: torch.optim.Optimizer,
                    replaced: dict[nn.Parameter, nn.Parameter]) -> None:
    """Put the new parameters of a widened residual stream in their old ones' places (same
    groups, same rates), their state restarted (restart_moments). Measured on the char
    transformer (benchmarks/probe_dmodel_growth.py): fresh moments train a grown stream
    better than moments carried into the new shape."""
    for group in optimizer.param_groups:
        group["params"] = [replaced.get(p, p) for p in group["params"]]
    for old, new in replaced.items():
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = _restarted(state, old.shape, new)


def restart_moments(optimizer: torch.optim.Optimizer) -> None:
    """Restart every parameter's optimizer state as a widening does (swap_parameters)."""
    for p, state in list(optimizer.state.items()):
        optimizer.state[p] = _restarted(state, p.shape, p)


def _restarted(state: dict, shape: torch.Size, p: nn.Parameter) -> dict:
    """`state` with every per-element tensor (one of the parameter's old `shape`: Adam's
    moments, a momentum buffer) at 0 in `p`'s shape, and scalar state (Adam's step count,
    so its bias correction) kept."""
    return {k: torch.zeros_like(p) if torch.is_tensor(v) and v.dim() and v.shape == shape else v
            for k, v in state.items()}
