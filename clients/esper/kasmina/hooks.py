"""The forward hooks that put a seed's contribution into the host's output, one per
stage. A DORMANT or GERMINATED slot installs no hook at all, so it costs nothing.

- TRAINING:   out = h + (s - s.detach())   with s = seed(h.detach())
              value exactly h; the seed gets the real loss's gradient; the host none.
- BLENDING..PROBATIONARY:  out = h + alpha * s   with s = seed(h), alpha a 0-dim tensor
              (updated in place, so torch.compile does not recompile per step).
- FOSSILIZED (not merged): out = h + seed(h), nothing else.

A width seed (esper.kasmina.widen) reads its host layer's input instead of `h`: a capture
hook on the host layer keeps it, and the stage hook sits on the next layer.

Live stages count non-finite seed values into a device tensor (no host sync) and replace
them with zeros, so a seed going NaN never reaches the host before the circuit breaker
culls it at the next safe point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from esper.kasmina.shapes import primary_output

if TYPE_CHECKING:
    from esper.kasmina.slot import SeedSlot

Hook = Callable[[torch.nn.Module, tuple, object], object]
# Where a seed reads its input when not from the hooked module's output (width seeds).
Source = Callable[[], torch.Tensor]


def _replace(output: object, new: torch.Tensor) -> object:
    if isinstance(output, tuple):
        return (new, *output[1:])
    return new


def _guarded(slot: SeedSlot, s: torch.Tensor) -> torch.Tensor:
    """Count NaN/Inf in the seed output on device and zero them."""
    slot.non_finite_acc.add_((~torch.isfinite(s.detach())).sum())
    return torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)


def training_hook(slot: SeedSlot, source: Source | None = None) -> Hook:
    def hook(module, args, output):
        h = primary_output(output)
        x = h if source is None else source()
        s = _guarded(slot, slot.seed(x.detach()))
        if s.requires_grad:
            s.register_hook(_linearised_delta_tap(slot, s.detach()))
        return _replace(output, h + (s - s.detach()).to(h.dtype))

    return hook


def _linearised_delta_tap(slot: SeedSlot, s_value: torch.Tensor):
    """The gradient reaching the seed output is dL/dh; <dL/dh, s> is the first-order
    change of the loss if the seed were blended in: the seed's own loss signal."""

    def tap(grad: torch.Tensor) -> None:
        slot.delta_acc.add_((grad.float() * s_value.float()).sum())
        slot.delta_count.add_(1)

    return tap


def blending_hook(slot: SeedSlot, source: Source | None = None) -> Hook:
    def hook(module, args, output):
        h = primary_output(output)
        s = _guarded(slot, slot.seed(h if source is None else source()))
        return _replace(output, h + (slot.alpha_t * s).to(h.dtype))

    return hook


def fossil_hook(slot: SeedSlot, source: Source | None = None) -> Hook:
    def hook(module, args, output):
        h = primary_output(output)
        return _replace(output, h + slot.seed(h if source is None else source()))

    return hook


def capture_hook(seed) -> Hook:
    """Keeps the host layer's input for a width seed (esper.kasmina.widen), whose stage
    hook sits on the next layer and reads it as `source`."""

    def hook(module, args, output):
        seed.tap = args[0]

    return hook
