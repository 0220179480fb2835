"""Diagnostic and gating ops: activation monitor, gradient-norm clamp, scalar gate."""

from __future__ import annotations

import torch
from torch import nn

# |x| at or below this counts as a dead (zero) activation: catches exact ReLU zeros and
# fp16/bf16 underflow without counting genuinely small activations.
DEAD_THRESHOLD = 1e-6
# Added to the gradient norm before dividing, so a zero gradient never divides by zero.
NORM_EPS = 1e-12


class ActivationMonitor(nn.Module):
    """Identity that keeps exponential moving averages of per-channel mean and variance and
    of the dead fraction in buffers (updated in training mode, no host sync)."""

    def __init__(self, c: int, momentum: float, cdim: int) -> None:
        super().__init__()
        self.momentum, self.cdim = momentum, cdim
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("var", torch.ones(c))
        self.register_buffer("dead_fraction", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._update(x.detach())
        return x

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        flat = x.movedim(self.cdim, -1).reshape(-1, x.shape[self.cdim]).to(self.mean.dtype)
        # The first batch sets the statistics; later ones blend in with `momentum`.
        m = torch.where(self.steps == 0, 1.0, self.momentum).to(self.mean.dtype)
        self.mean.lerp_(flat.mean(0), m)
        self.var.lerp_(flat.var(0, unbiased=False), m)
        dead = (flat.abs() <= DEAD_THRESHOLD).to(self.mean.dtype).mean()
        self.dead_fraction.lerp_(dead, m)
        self.steps.add_(1)


class _ClampGradNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, max_norm: float) -> torch.Tensor:
        ctx.max_norm = max_norm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        norm = torch.linalg.vector_norm(grad.float())
        scale = (ctx.max_norm / (norm + NORM_EPS)).clamp(max=1.0)
        return grad * scale.to(grad.dtype), None


class GradNormClamp(nn.Module):
    """Identity forward; in backward the incoming gradient's L2 norm is clamped to max_norm."""

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = max_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ClampGradNorm.apply(x, self.max_norm)


class ScalarGate(nn.Module):
    """y = gate * x with a learned (or, when not trainable, fixed buffer) scalar gate."""

    def __init__(self, init_value: float, trainable: bool) -> None:
        super().__init__()
        value = torch.tensor(float(init_value))
        if trainable:
            self.gate = nn.Parameter(value)
        else:
            self.register_buffer("gate", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate
