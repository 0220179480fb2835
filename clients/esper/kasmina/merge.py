"""Folding fossilized seeds into the host.

A seed is *merged* when it is affine and pointwise over the channel dim
(seed(h) = M0 h + c at every position) and the host is an nn.Linear, nn.Conv1d or
nn.Conv2d: then h + seed(h) = (I + M0)(W x + b) + c, so W <- (I + M0) W and
b <- (I + M0) b + c, and the slot disappears (zero step-time overhead). This covers the
LoRA and IA3 adapters and any purely linear seed. Whether a seed qualifies is *measured*
(M0 and c are read by probing the seed, then checked on random inputs), never assumed
from its name. Anything else (MLPs, convs with a spatial kernel, attention, norms) stays
as a residual `h + seed(h)` hook, and unwrap() turns it into a torch.fx GraphModule made
of torch classes only.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from esper.kasmina.shapes import probe_shape
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape

# Relative tolerance of the affine check in float64: a truly affine seed agrees to
# ~1e-12; anything nonlinear is off by orders of magnitude more.
AFFINE_RTOL = 1e-8
MERGEABLE_HOSTS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def affine_map(seed: nn.Module, shape: SlotShape) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(M0, c) with seed(h) = M0 h + c pointwise over channels, or None if it is not."""
    c_dim = shape.channels
    probe = copy.deepcopy(seed).double().eval()
    device = next((p.device for p in probe.parameters()), torch.device("cpu"))
    channel_last = shape.kind in (SlotKind.SLOT_KIND_FEATURES, SlotKind.SLOT_KIND_SEQUENCE)
    pad = {SlotKind.SLOT_KIND_SEQUENCE: (1,), SlotKind.SLOT_KIND_CONV1D: (1,),
           SlotKind.SLOT_KIND_CONV2D: (1, 1)}.get(shape.kind, ())
    try:
        with torch.no_grad():
            eye = torch.eye(c_dim, dtype=torch.float64, device=device)
            zero = torch.zeros(1, c_dim, dtype=torch.float64, device=device)
            if channel_last:
                basis = probe(eye.reshape(c_dim, *pad, c_dim)).reshape(c_dim, c_dim)
                offset = probe(zero.reshape(1, *pad, c_dim)).reshape(c_dim)
            else:
                basis = probe(eye.reshape(c_dim, c_dim, *pad)).reshape(c_dim, c_dim)
                offset = probe(zero.reshape(1, c_dim, *pad)).reshape(c_dim)
            m0 = (basis - offset).T.contiguous()  # column i = seed(e_i) - c
            x = torch.randn(probe_shape(shape, batch=3), dtype=torch.float64, device=device)
            expected = _apply_affine(x, m0, offset, channel_last)
            got = probe(x)
    except Exception:
        return None
    scale = expected.abs().max().clamp_min(1.0)
    if got.shape != expected.shape or (got - expected).abs().max() > AFFINE_RTOL * scale:
        return None
    return m0, offset


def _apply_affine(x: torch.Tensor, m0: torch.Tensor, c: torch.Tensor, channel_last: bool):
    if channel_last:
        return x @ m0.T + c
    moved = x.movedim(1, -1)
    return (moved @ m0.T + c).movedim(-1, 1)


def try_merge(host: nn.Module, seed: nn.Module | None, shape: SlotShape,
              device: torch.device, dtype: torch.dtype) -> bool:
    """Fold `seed` into `host`'s weights in place when both allow it; True if merged."""
    if seed is None or not isinstance(host, MERGEABLE_HOSTS):
        return False
    found = affine_map(seed, shape)
    if found is None:
        return False
    m0, c = found
    if host.bias is None and c.abs().max() > 0:
        return False  # the offset would need a bias the host does not have
    with torch.no_grad():
        mix = torch.eye(m0.shape[0], dtype=torch.float64, device=m0.device) + m0
        w = host.weight.double()
        merged_w = torch.einsum("ok,k...->o...", mix, w)
        host.weight.copy_(merged_w.to(host.weight.dtype))
        if host.bias is not None:
            host.bias.copy_((mix @ host.bias.double() + c).to(host.bias.dtype))
    return True


class _Residual(nn.Module):
    """Traced once by torch.fx, never returned: h = host(x); h + seed(h)."""

    def __init__(self, host: nn.Module, seed: nn.Module) -> None:
        super().__init__()
        self.host = host
        self.seed = seed

    def forward(self, x):
        h = self.host(x)
        return h + self.seed(h)


class _ResidualEncoderLayer(_Residual):
    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        h = self.host(src, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=is_causal)
        return h + self.seed(h)


class _ResidualAttention(_Residual):
    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        out = self.host(query, key, value, key_padding_mask=key_padding_mask,
                        need_weights=need_weights, attn_mask=attn_mask,
                        average_attn_weights=average_attn_weights, is_causal=is_causal)
        h = out[0]
        return (h + self.seed(h), out[1])


def residual_module(host: nn.Module, seed: nn.Module) -> nn.Module:
    """A torch-only module computing host(x) + seed(host(x)) (a traced GraphModule)."""
    if isinstance(host, nn.TransformerEncoderLayer):
        wrapper: _Residual = _ResidualEncoderLayer(host, seed)
    elif isinstance(host, nn.MultiheadAttention):
        wrapper = _ResidualAttention(host, seed)
    else:
        wrapper = _Residual(host, seed)
    gm = fx.symbolic_trace(wrapper)
    gm.__class__.__name__ = f"Fossil{type(host).__name__}"
    if isinstance(host, nn.TransformerEncoderLayer):
        # nn.TransformerEncoder reads layers[0].self_attn.batch_first; alias it without
        # registering it twice (so state_dict keys stay unique).
        gm.__dict__["self_attn"] = host.self_attn
    return gm
