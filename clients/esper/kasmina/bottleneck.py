"""Bottleneck initialisation of a new seed (KasminaConfig.seed_init = "bottleneck").

A residual seed s(h) = out(act(W h)) starts with `out` at zero, so at first only `out`
learns, from the gradient dL/dout = sum over samples of delta (act(W h))^T, where delta =
dL/dh is the loss's gradient at the slot. How fast the seed starts to help depends on how
well its units W h line up with delta. GradMax chooses W for that: with a linear act, the
norm of that gradient is largest when W's rows are the top right singular vectors of the
slot's bottleneck statistic

    M = sum over samples of delta h^T        (C x C, the slot's features on both sides)

the directions of the slot's input whose change the loss most wants along its own
gradient. Kasmina accumulates M while the seed is GERMINATED (a capture hook on the host
layer and a hook on its output's gradient: the seed is not in the forward yet, so the run
computes exactly what it would without it) and, when the seed enters TRAINING, sets the
seed's entry layer's first rows to those directions, each with the norm the layer's own
initialisation gave its rows. The remaining rows keep their random initialisation (M has
rank at most C; an MLP seed has 4C units). The output layer stays at zero, so the
function is preserved exactly as before.

Only seeds whose entry op is a Linear reading the slot's input on a FEATURES or SEQUENCE
slot qualify; other seeds initialise as their blueprint says. A checkpoint does not carry
the statistic: a seed restored while GERMINATED starts as its blueprint says.
"""

from __future__ import annotations

import torch
from torch import nn

from esper.blueprints.builder import SeedModule
from esper.leyline.v1.common_pb2 import SlotKind

# Slot kinds whose features are the last dimension of the host's output.
_FEATURES_LAST = (SlotKind.SLOT_KIND_FEATURES, SlotKind.SLOT_KIND_SEQUENCE)


def entry_linear(seed: nn.Module, kind: int) -> nn.Linear | None:
    """The seed's Linear that reads the slot's input, when the seed qualifies."""
    if kind not in _FEATURES_LAST or not isinstance(seed, SeedModule):
        return None
    readers = seed.input_readers()
    if len(readers) != 1:
        return None
    layer = seed.ops[readers[0]]
    return layer if isinstance(layer, nn.Linear) and layer.in_features == seed.channels else None


class BottleneckStatistic:
    """M = sum of delta h^T over the training steps seen, for one slot."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.m = torch.zeros(channels, channels, dtype=torch.float64, device=device)
        self.samples = 0

    def hook(self, module: nn.Module, args, output) -> None:
        """Forward hook on the host layer: on a training pass with gradients, keep the
        output and add delta h^T once its gradient arrives."""
        h = output[0] if isinstance(output, tuple) else output
        if not (module.training and torch.is_grad_enabled() and isinstance(h, torch.Tensor)
                and h.requires_grad):
            return
        value = h.detach()
        h.register_hook(lambda delta: self._add(delta, value))

    def _add(self, delta: torch.Tensor, h: torch.Tensor) -> None:
        c = self.m.shape[0]
        d, x = delta.reshape(-1, c).double(), h.reshape(-1, c).double()
        if torch.isfinite(d).all() and torch.isfinite(x).all():
            self.m.addmm_(d.T, x)
            self.samples += d.shape[0]

    @torch.no_grad()
    def apply(self, layer: nn.Linear) -> int:
        """Set `layer`'s first rows to M's top right singular vectors (each with the mean
        row norm of the layer's weights); returns how many rows were set (0 when nothing
        was seen or M is zero)."""
        if self.samples == 0 or not torch.any(self.m):
            return 0
        _, s, vh = torch.linalg.svd(self.m)
        rank = int((s > s[0] * 1e-6).sum())
        k = min(rank, layer.out_features)
        norm = layer.weight.norm(dim=1).mean()
        layer.weight[:k] = (vh[:k] * norm).to(layer.weight.dtype)
        return k
