"""Sequence and routing ops: multi-head attention, grouped-query attention with RoPE,
and a top-k routed mixture of MLP experts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# RoPE base frequency from the RoFormer paper (and LLaMA): wavelengths up to ~10000*2pi tokens.
ROPE_BASE = 10000.0


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)  # (B, heads, T, head_dim)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, C): fused qkv projection, output projection."""

    def __init__(self, c: int, num_heads: int, causal: bool) -> None:
        super().__init__()
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def zero_init_(self) -> None:
        """Zero the output projection so the op outputs exactly 0."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Indexed, not unpacked: torch.fx traces this op into a fossil (unpacking a traced
        # value would iterate it).
        qkv = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (_split_heads(qkv[i], self.num_heads) for i in range(3))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(_merge_heads(y))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class GQARoPEAttention(nn.Module):
    """Grouped-query self-attention with rotary position embeddings (no biases)."""

    def __init__(self, c: int, num_heads: int, num_kv_heads: int, causal: bool) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.causal = num_heads, num_kv_heads, causal
        self.head_dim = c // num_heads
        kv = num_kv_heads * self.head_dim
        self.q = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, kv, bias=False)
        self.v = nn.Linear(c, kv, bias=False)
        self.o = nn.Linear(c, c, bias=False)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.o.weight)

    def _rope(self, t: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.head_dim // 2
        inv_freq = ROPE_BASE ** (-torch.arange(half, device=like.device, dtype=torch.float32) / half)
        angles = torch.outer(torch.arange(t, device=like.device, dtype=torch.float32), inv_freq)
        return angles.cos().to(like.dtype), angles.sin().to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q(x), self.num_heads)
        k = _split_heads(self.k(x), self.num_kv_heads)
        v = _split_heads(self.v(x), self.num_kv_heads)
        cos, sin = self._rope(x.shape[1], q)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        group = self.num_heads // self.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.o(_merge_heads(y))


class MixtureOfExperts(nn.Module):
    """Top-k routed GELU MLP experts over the channel dim. Each position goes to the k
    experts with the highest router logits, weighted by a softmax over those k logits."""

    def __init__(self, c: int, num_experts: int, top_k: int, hidden: int, cdim: int) -> None:
        super().__init__()
        # A plain int (not w_in.shape[0]) so torch.fx can trace the expert loop (unwrap()).
        self.top_k, self.cdim, self.num_experts = top_k, cdim, num_experts
        self.router = nn.Linear(c, num_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(num_experts, hidden, c))
        self.b_in = nn.Parameter(torch.empty(num_experts, hidden))
        self.w_out = nn.Parameter(torch.empty(num_experts, c, hidden))
        self.b_out = nn.Parameter(torch.empty(num_experts, c))
        self._init_like_linear(self.w_in, self.b_in, c)
        self._init_like_linear(self.w_out, self.b_out, hidden)

    @staticmethod
    def _init_like_linear(w: nn.Parameter, b: nn.Parameter, fan_in: int) -> None:
        # nn.Linear's default init, per expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(w, -bound, bound)
        nn.init.uniform_(b, -bound, bound)

    def zero_init_(self) -> None:
        """Zero the experts' output projections so the op outputs exactly 0."""
        nn.init.zeros_(self.w_out)
        nn.init.zeros_(self.b_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xl = x if self.cdim == -1 else x.movedim(self.cdim, -1)
        flat = xl.reshape(-1, xl.shape[-1])
        top_logits, top_idx = self.router(flat).topk(self.top_k, dim=-1)
        weights = top_logits.softmax(dim=-1)
        out = torch.zeros_like(flat)
        for e in range(self.num_experts):
            rows, slot = (top_idx == e).nonzero(as_tuple=True)
            h = F.gelu(F.linear(flat[rows], self.w_in[e], self.b_in[e]))
            y = F.linear(h, self.w_out[e], self.b_out[e])
            # Under autocast the experts compute in reduced precision; accumulate in x's dtype.
            contrib = y * weights[rows, slot].unsqueeze(-1)
            out = out.index_add(0, rows, contrib.to(out.dtype))
        out = out.view(xl.shape)
        return out if self.cdim == -1 else out.movedim(-1, self.cdim)
