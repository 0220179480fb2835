"""torch modules for the op vocabulary, built from resolved graph nodes.

Channel ops (LINEAR, norms, CHANNEL_SCALE, MOE) act on the channel dim of every layout:
the last dim for FEATURES (B, C) and SEQUENCE (B, T, C), dim 1 for CONV1D (B, C, L) and
CONV2D (B, C, H, W). Parameter names are fixed per op, so state_dicts are stable.
"""

from __future__ import annotations

import torch
from torch import nn

from esper.blueprints.graph import ResolvedNode
from esper.blueprints.ops_diag import ActivationMonitor, GradNormClamp, ScalarGate
from esper.blueprints.ops_seq import GQARoPEAttention, MixtureOfExperts, SelfAttention
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

_CONV_KINDS = (common.SLOT_KIND_CONV1D, common.SLOT_KIND_CONV2D)


def channel_dim(kind: int) -> int:
    """Index of the channel dim of a slot activation of this kind."""
    return 1 if kind in _CONV_KINDS else -1


def to_channels_last(x: torch.Tensor, cdim: int) -> torch.Tensor:
    return x if cdim == -1 else x.movedim(cdim, -1)


def from_channels_last(y: torch.Tensor, cdim: int) -> torch.Tensor:
    return y if cdim == -1 else y.movedim(-1, cdim)


class ChannelLinear(nn.Linear):
    """nn.Linear over the channel dim of any layout."""

    def __init__(self, cin: int, cout: int, bias: bool, cdim: int) -> None:
        super().__init__(cin, cout, bias=bias)
        self.cdim = cdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_channels_last(super().forward(to_channels_last(x, self.cdim)), self.cdim)


class ChannelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the channel dim of any layout."""

    def __init__(self, c: int, eps: float, cdim: int) -> None:
        super().__init__(c, eps=eps)
        self.cdim = cdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_channels_last(super().forward(to_channels_last(x, self.cdim)), self.cdim)


class ChannelRMSNorm(nn.RMSNorm):
    """nn.RMSNorm over the channel dim of any layout."""

    def __init__(self, c: int, eps: float, cdim: int) -> None:
        super().__init__(c, eps=eps)
        self.cdim = cdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_channels_last(super().forward(to_channels_last(x, self.cdim)), self.cdim)


class ChannelScale(nn.Module):
    """Learned per-channel scale: y = x * scale (broadcast on the channel dim)."""

    def __init__(self, c: int, init_value: float, cdim: int, ndim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((c,), float(init_value)))
        # (C,) broadcasts on the last dim; conv layouts need (C, 1) or (C, 1, 1).
        self._view = (c,) if cdim == -1 else (c,) + (1,) * (ndim - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(self._view)


class Add(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Mul(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class GlobalAvgPool(nn.Module):
    """Mean over tokens (SEQUENCE) or space (CONV1D/CONV2D), dims kept for broadcasting."""

    def __init__(self, kind: int) -> None:
        super().__init__()
        self.dims = {common.SLOT_KIND_SEQUENCE: (1,), common.SLOT_KIND_CONV1D: (2,),
                     common.SLOT_KIND_CONV2D: (2, 3)}[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=self.dims, keepdim=True)


class WidenRequest(nn.Module):
    """An OP_TYPE_WIDEN node: how many units to add, nothing else. Kasmina turns it into
    the real width seed (esper.kasmina.widen), whose layers copy the host's own; alone it
    cannot run."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.units = units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a width seed runs only once Kasmina has materialised it against "
                           "its host layers (esper.kasmina.widen)")

    def extra_repr(self) -> str:
        return f"units={self.units}"


def _zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.zero_()


def _conv(node: ResolvedNode, conv_cls) -> nn.Module:
    a = node.attrs
    conv = conv_cls(node.in_acts[0].channels, a["out_channels"], a["kernel_size"],
                    padding=a["kernel_size"] // 2, groups=a["groups"], bias=a["bias"])
    if a["init"] == "zeros":
        _zero_(conv)
    return conv


def make_op(node: ResolvedNode, kind: int) -> nn.Module:
    """The module for one resolved node in a slot of ``kind``."""
    a, cdim = node.attrs, channel_dim(kind)
    cin = node.in_acts[0].channels if node.in_acts else 0
    ndim = {common.SLOT_KIND_FEATURES: 2, common.SLOT_KIND_SEQUENCE: 3,
            common.SLOT_KIND_CONV1D: 3, common.SLOT_KIND_CONV2D: 4}[kind]
    op = node.op
    if op == bp.OP_TYPE_LINEAR:
        module = ChannelLinear(cin, a["out_features"], a["bias"], cdim)
    elif op == bp.OP_TYPE_CONV2D:
        module = _conv(node, nn.Conv2d)
    elif op == bp.OP_TYPE_CONV1D:
        module = _conv(node, nn.Conv1d)
    elif op == bp.OP_TYPE_LAYER_NORM:
        module = ChannelLayerNorm(cin, a["eps"], cdim)
    elif op == bp.OP_TYPE_RMS_NORM:
        module = ChannelRMSNorm(cin, a["eps"], cdim)
    elif op in _STATELESS:
        module = _STATELESS[op]()
    elif op == bp.OP_TYPE_CHANNEL_SCALE:
        module = ChannelScale(cin, a["init_value"], cdim, ndim)
    elif op == bp.OP_TYPE_GLOBAL_AVG_POOL:
        module = GlobalAvgPool(kind)
    elif op == bp.OP_TYPE_SELF_ATTENTION:
        module = SelfAttention(cin, a["num_heads"], a["causal"])
    elif op == bp.OP_TYPE_GQA_ROPE:
        module = GQARoPEAttention(cin, a["num_heads"], a["num_kv_heads"], a["causal"])
    elif op == bp.OP_TYPE_MOE:
        module = MixtureOfExperts(cin, a["num_experts"], a["top_k"], a["hidden"], cdim)
    elif op == bp.OP_TYPE_ACTIVATION_MONITOR:
        module = ActivationMonitor(cin, a["momentum"], cdim)
    elif op == bp.OP_TYPE_GRAD_NORM_CLAMP:
        module = GradNormClamp(a["max_norm"])
    elif op == bp.OP_TYPE_DROPOUT:
        module = nn.Dropout(a["p"])
    elif op == bp.OP_TYPE_SCALAR_GATE:
        module = ScalarGate(a["init_value"], a["trainable"])
    elif op == bp.OP_TYPE_WIDEN:
        module = WidenRequest(a["units"])
    else:
        raise AssertionError(f"no module for op {op}")
    if a.get("init") == "zeros" and op not in (bp.OP_TYPE_CONV2D, bp.OP_TYPE_CONV1D):
        zero_init = getattr(module, "zero_init_", None)
        zero_init() if zero_init else _zero_(module)
    return module


_STATELESS = {
    bp.OP_TYPE_GELU: nn.GELU,
    bp.OP_TYPE_SILU: nn.SiLU,
    bp.OP_TYPE_RELU: nn.ReLU,
    bp.OP_TYPE_SIGMOID: nn.Sigmoid,
    bp.OP_TYPE_ADD: Add,
    bp.OP_TYPE_MUL: Mul,
}
