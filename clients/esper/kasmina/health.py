"""Per-layer health (Leyline LayerHealth) measured from the real tensors.

Forward hooks add each activation's statistics into a small tensor on the activation's
device, and `after_backward()` folds the layer's gradient norm in the same way: nothing
leaves the device during a step. `step()` returns LayerHealth protos every `every`
steps (the only sync), then starts a new window. Only training-mode forwards are observed
(validation passes are not training health), and with `sample_every = k` only one training
step in k, so the counts (NaN/Inf included) are those of the sampled steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from esper.kasmina.shapes import primary_output
from esper.leyline.v1.signals_pb2 import LayerHealth

# |activation| above this counts as saturated: beyond +-6 a sigmoid's slope is < 0.003
# and tanh/GELU tails are flat, so units there pass almost no gradient.
SATURATION_THRESHOLD = 6.0
DEFAULT_EVERY = 50
# Observe 1 training step in this many (1 = every step). Statistics of a window are means
# over many steps of whole-batch reductions, so sampling barely changes them, while the
# per-step cost of the reductions is what a small model notices (see Tolaria's default).
DEFAULT_SAMPLE_EVERY = 1
# Activation accumulator layout.
_N, _SUM, _SUMSQ, _ZERO, _SAT, _NAN, _INF = range(7)
# Gradient accumulator layout: sum of norms, sum of squared norms, steps with grads.
_GSUM, _GSQ, _GN = range(3)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _LayerStats:
    def __init__(self, name: str, module: nn.Module, device: torch.device) -> None:
        self.name = name
        self.module = module
        dtype = _acc_dtype(device)
        self.act = torch.zeros(7, dtype=dtype, device=device)
        self.grad = torch.zeros(3, dtype=dtype, device=device)
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.prev = [p.detach().clone() for p in self.params]


class HealthMonitor:
    """Collect LayerHealth for named modules (e.g. every slot's host module)."""

    def __init__(self, layers: dict[str, nn.Module], *, every: int = DEFAULT_EVERY,
                 saturation: float = SATURATION_THRESHOLD,
                 sample_every: int = DEFAULT_SAMPLE_EVERY) -> None:
        if every <= 0:
            raise ValueError("every must be > 0")
        if sample_every <= 0:
            raise ValueError("sample_every must be > 0")
        self.every = every
        self.saturation = saturation
        self.sample_every = sample_every
        self.steps = 0
        # Whether the current step is observed; eval-mode forwards (validation) never are.
        self._sampling = True
        self._layers = [_LayerStats(n, m, _device_of(m)) for n, m in layers.items()]
        self._handles = [self._attach(s) for s in self._layers]

    @classmethod
    def for_slots(cls, model, **kwargs) -> HealthMonitor:
        """Monitor the host module of every slot of a MorphableModel, keyed by slot id."""
        return cls({s.slot_id: s.host_module for s in model.slots.values()}, **kwargs)

    def _attach(self, stats: _LayerStats):
        def hook(module, args, output):
            if self._sampling and module.training:
                self._observe(stats, primary_output(output))

        return stats.module.register_forward_hook(hook)

    def _observe(self, stats: _LayerStats, x: torch.Tensor) -> None:
        x = x.detach()
        xf = x.to(stats.act.dtype)
        finite = torch.isfinite(xf)
        xz = torch.where(finite, xf, torch.zeros((), dtype=xf.dtype, device=xf.device))
        stats.act.add_(torch.stack([
            finite.sum(), xz.sum(), (xz * xz).sum(), (x == 0).sum(),
            (xz.abs() > self.saturation).sum(), torch.isnan(x).sum(), torch.isinf(x).sum(),
        ]).to(stats.act.dtype))

    def after_backward(self) -> None:
        """Fold this step's gradient norms in (call after backward, before zero_grad)."""
        if not self._sampling:
            return
        for stats in self._layers:
            grads = [p.grad for p in stats.params if p.grad is not None]
            if not grads:
                continue
            norm = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(grads)).to(stats.grad.dtype))
            stats.grad.add_(torch.stack([norm, norm * norm, torch.ones_like(norm)]))

    def step(self) -> list[LayerHealth] | None:
        """Count a step; every `every` steps return the window's LayerHealth list."""
        self.steps += 1
        self._sampling = self.steps % self.sample_every == 0
        return self.read() if self.steps % self.every == 0 else None

    def read(self) -> list[LayerHealth]:
        """LayerHealth of the current window (one sync), then reset the window."""
        window = self.steps % self.every or self.every
        out = [self._health(s, window) for s in self._layers]
        return out

    def _health(self, stats: _LayerStats, window: int) -> LayerHealth:
        n, total, sq, zero, sat, nan, inf = stats.act.tolist()
        gsum, gsq, gcount = stats.grad.tolist()
        mean = total / n if n else 0.0
        var = max(sq / n - mean * mean, 0.0) if n else 0.0
        gmean = gsum / gcount if gcount else 0.0
        gvar = max(gsq / gcount - gmean * gmean, 0.0) if gcount else 0.0
        numel = n + nan + inf
        health = LayerHealth(
            layer_id=stats.name, activation_mean=mean, activation_std=math.sqrt(var),
            dead_fraction=zero / numel if numel else 0.0,
            saturated_fraction=sat / numel if numel else 0.0,
            gradient_norm=gmean, gradient_variance=gvar,
            update_ratio=self._update_ratio(stats, window), nan_count=int(nan),
            inf_count=int(inf), window_steps=window,
        )
        stats.act.zero_()
        stats.grad.zero_()
        return health

    @staticmethod
    def _update_ratio(stats: _LayerStats, window: int) -> float:
        """Mean per-step ||dW|| / ||W|| over the window (from the window's start weights)."""
        if not stats.params:
            return 0.0
        with torch.no_grad():
            delta = torch.stack([torch.linalg.vector_norm(p.detach() - q)
                                 for p, q in zip(stats.params, stats.prev)]).norm()
            base = torch.stack([torch.linalg.vector_norm(q) for q in stats.prev]).norm()
            ratio = float(delta / base.clamp_min(1e-12)) / max(window, 1)
            stats.prev = [p.detach().clone() for p in stats.params]
        return ratio

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
