"""Keeping the user's learning-rate schedulers in step with the seed param groups.

A torch scheduler keeps per-group state: lists parallel to `optimizer.param_groups`
(`base_lrs`, `_last_lr`, LambdaLR's `lr_lambdas`, ReduceLROnPlateau's `min_lrs`, CyclicLR's
`max_lrs` and momentum lists) and keys inside each group (`initial_lr`; OneCycleLR's
`max_lr`, `min_lr`, `max_momentum`, `base_momentum`). A group added after the scheduler was
built has no entry, and the scheduler's next `step()` fails (`zip() argument 2 is shorter`).

So when a seed group is added, every scheduler of the optimizer gets, for the new group, a
copy of the host group's entries; when one is removed, its entries go with it. A group
that starts at the host's current learning rate with the host's entries is then moved by
every built-in scheduler exactly as the host group is: it follows the host's schedule.

The schedulers are found when a group changes (a germination, a cull, a merge on
fossilization: a few times a run), as the LRScheduler objects that refer to the
optimizer (`gc.get_referrers`: a few tens of milliseconds on a large heap), so schedulers
built before or after `attach` are all kept in step without being passed to Tolaria.
"""

from __future__ import annotations

import gc

import torch
from torch.optim.lr_scheduler import LRScheduler

# Scheduler attributes that hold one entry per param group (those a scheduler lacks are
# skipped). Only these names: a list that merely happens to have one entry per group
# (OneCycleLR's `_schedule_phases`) is not per-group state.
PER_GROUP_LISTS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs",
                   "base_momentums", "max_momentums")
# Param-group keys schedulers write at construction and read on every step.
SCHEDULER_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def attached_schedulers(optimizer: torch.optim.Optimizer) -> list[LRScheduler]:
    """The learning-rate schedulers alive now that drive `optimizer`."""
    return [obj for obj in gc.get_referrers(optimizer)
            if isinstance(obj, LRScheduler) and getattr(obj, "optimizer", None) is optimizer]


# Of those, the ones that are learning rates (scaled with a group that starts scaled).
RATE_LISTS = ("base_lrs", "min_lrs", "max_lrs")
RATE_KEYS = ("initial_lr", "max_lr", "min_lr")


def scheduler_keys(host_group: dict, scale: float = 1.0) -> dict:
    """The scheduler keys of the host group, for a new group that follows it (its rates
    times `scale`, for a group that follows the host's schedule from a scaled start)."""
    return {k: host_group[k] * scale if k in RATE_KEYS else host_group[k]
            for k in SCHEDULER_GROUP_KEYS if k in host_group}


def register_group(optimizer: torch.optim.Optimizer, host_index: int, scale: float = 1.0) -> None:
    """The last param group was just added: give it, in every scheduler's per-group
    lists, a copy of the entry of the group at `host_index` (its rates times `scale`)."""
    count = len(optimizer.param_groups)
    new_lr = optimizer.param_groups[-1]["lr"]
    for scheduler in attached_schedulers(optimizer):
        for name in PER_GROUP_LISTS:
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == count - 1:
                entry = values[host_index]
                if name == "_last_lr":
                    entry = new_lr
                elif name in RATE_LISTS and isinstance(entry, float | int):
                    entry = entry * scale
                values.append(entry)


def unregister_group(optimizer: torch.optim.Optimizer, index: int) -> None:
    """The param group at `index` is about to be removed: drop its scheduler entries."""
    count = len(optimizer.param_groups)
    for scheduler in attached_schedulers(optimizer):
        for name in PER_GROUP_LISTS:
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == count:
                del values[index]


def reorder_groups(optimizer: torch.optim.Optimizer, order: list[int]) -> None:
    """Put the param groups in `order` (old indices), moving scheduler entries along."""
    count = len(optimizer.param_groups)
    for scheduler in attached_schedulers(optimizer):
        for name in PER_GROUP_LISTS:
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == count:
                values[:] = [values[i] for i in order]
    optimizer.param_groups[:] = [optimizer.param_groups[i] for i in order]
