"""d_model growth of the character transformer, in place and function-preserving (a probe
of the mechanism the char host lacks; not yet a Kasmina seed).

Every feature of the residual stream is duplicated, so d_model doubles: LayerNorm sees the
same mean and variance over [x, x] as over x, and so normalises to [x_hat, x_hat]. Each
layer that writes to the stream (embeddings, attention out-projection, MLP second layer)
writes both copies; each layer that reads a duplicated quantity (the stream, the attention
heads' outputs, the MLP's hidden units) reads the two copies with weights a*W and (1-a)*W,
a drawn per weight in [0, 1], which sums to W on equal copies (the function is unchanged)
and gives the copies different gradients (so they do not stay equal). Attention keeps its
heads, each twice as wide: a head's queries and keys are its old ones, duplicated, with the
queries scaled by 1/sqrt(2), so q.k / sqrt(head_dim) is the old score. The MLP's hidden
width doubles the same way (its units duplicated). Adam's moments are carried by the same
index maps (a copy's gradient is its original's at the moment of growth, up to the split),
or started fresh; `noise` breaks the copies' symmetry at the cost of exactness.

Measured (benchmarks/probe_dmodel_growth.py, results/morphogenesis-char-dmodel-probe.json): exact
duplication stalls, because the two copies of a feature get nearly the same gradient (each
reader's split averages out over its many weights), so they stay tied and the model stays
about as expressive as before. Only fresh moments plus noise of the rows' own spread recover
a tie with the wide model trained from the start at the same FLOPs.

`grow_d_model` widens by k features instead, with no copies: each new stream feature starts
as the mean of the old ones, which LayerNorm (its old gains scaled by sqrt(d / (d + k)) and
its eps by d / (d + k)) maps to exactly 0, so every weight that reads a new feature can
start random and nothing is tied. It can grow in small steps (32 -> 40 -> 48); what it
measured is in benchmarks/probe_dmodel_growth.py. It is now Kasmina's residual-stream
growth (esper.kasmina.stream), called here outside a session."""

from __future__ import annotations

import math

import torch

from esper.kasmina.stream import StreamSite
from esper.tolaria.optim import swap_parameters

from .text import SEQ_LEN, CharTransformer


def _copies(n: int) -> torch.Tensor:
    """new index -> old index when each of n features appears twice: [0..n-1, 0..n-1]."""
    return torch.arange(2 * n) % n


def _head_copies(d: int, heads: int) -> torch.Tensor:
    """new index -> old index for the concatenated heads when each head's width doubles:
    head h's new dims are its old ones twice."""
    hd = d // heads
    new = torch.arange(2 * d)
    return (new // (2 * hd)) * hd + (new % (2 * hd)) % hd


def _split(rows: int, col_map: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Coefficients (rows, len(col_map)) summing to 1 over each old column's two copies."""
    n = len(col_map) // 2
    a = torch.rand(rows, n, generator=g, dtype=torch.float64)
    coef = torch.empty(rows, 2 * n, dtype=torch.float64)
    order = col_map.argsort(stable=True)  # old index k's two copies: order[2k], order[2k+1]
    coef[:, order[0::2]] = a
    coef[:, order[1::2]] = 1 - a
    return coef


class _Map:
    """How one parameter's new tensor is made from its old one."""

    def __init__(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
                 row_scale: torch.Tensor | None = None, split: torch.Tensor | None = None):
        self.rows, self.cols, self.row_scale, self.split = rows, cols, row_scale, split

    def index(self, t: torch.Tensor) -> torch.Tensor:
        if self.rows is not None:
            t = t.index_select(0, self.rows)
        if self.cols is not None:
            t = t.index_select(1, self.cols)
        return t

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        out = self.index(t).double()
        if self.row_scale is not None:
            out = out * (self.row_scale[:, None] if out.dim() > 1 else self.row_scale)
        if self.split is not None:
            out = out * self.split
        return out.to(t.dtype)


def _maps(model: CharTransformer, g: torch.Generator) -> dict[str, _Map]:
    d = model.norm.normalized_shape[0]
    heads = model.blocks[0].self_attn.num_heads
    ff = model.blocks[0].linear1.out_features
    stream, hidden, per_head = _copies(d), _copies(ff), _head_copies(d, heads)
    maps = {"embed.weight": _Map(cols=stream), "pos.weight": _Map(cols=stream),
            "norm.weight": _Map(rows=stream), "norm.bias": _Map(rows=stream),
            "head.weight": _Map(cols=stream, split=_split(model.head.out_features, stream, g)),
            "head.bias": _Map()}
    qkv = torch.cat([per_head + i * d for i in range(3)])
    q_scale = torch.cat([torch.full((2 * d,), 1 / math.sqrt(2), dtype=torch.float64),
                         torch.ones(4 * d, dtype=torch.float64)])
    for i, _ in enumerate(model.blocks):
        p = f"blocks.{i}."
        maps |= {
            p + "self_attn.in_proj_weight": _Map(rows=qkv, cols=stream, row_scale=q_scale,
                                                 split=_split(6 * d, stream, g)),
            p + "self_attn.in_proj_bias": _Map(rows=qkv, row_scale=q_scale),
            p + "self_attn.out_proj.weight": _Map(rows=stream, cols=per_head,
                                                  split=_split(2 * d, per_head, g)),
            p + "self_attn.out_proj.bias": _Map(rows=stream),
            p + "linear1.weight": _Map(rows=hidden, cols=stream, split=_split(2 * ff, stream, g)),
            p + "linear1.bias": _Map(rows=hidden),
            p + "linear2.weight": _Map(rows=stream, cols=hidden, split=_split(2 * d, hidden, g)),
            p + "linear2.bias": _Map(rows=stream),
        }
        for norm in ("norm1", "norm2"):
            maps |= {p + f"{norm}.weight": _Map(rows=stream), p + f"{norm}.bias": _Map(rows=stream)}
    return maps


@torch.no_grad()
def double_d_model(model: CharTransformer, optimizer: torch.optim.Adam | None = None,
                   seed: int = 0, fresh_moments: bool = False,
                   noise: float = 0.0) -> torch.optim.Adam | None:
    """Double `model`'s d_model in place (its submodules replaced by wider ones computing
    the same function). With an Adam `optimizer`, returns a new one over the wider
    parameters, its hyperparameters and moments carried over."""
    g = torch.Generator().manual_seed(seed)
    maps = _maps(model, g)
    d = model.norm.normalized_shape[0]
    vocab = model.head.out_features
    old = dict(model.named_parameters())
    wide = CharTransformer(vocab, 2 * d, layers=len(model.blocks),
                           heads=model.blocks[0].self_attn.num_heads)
    wide.to(next(model.parameters()).dtype).train(model.training)
    for name, p in wide.named_parameters():
        p.copy_(maps[name].weight(old[name]))
    if noise:
        _antisymmetric_noise(wide, d, noise, g)
    new_opt = None
    if optimizer is not None:
        new_opt = _adam_over(wide, optimizer)
        for name, p in wide.named_parameters():
            state = optimizer.state.get(old[name])
            if state and fresh_moments:
                new_opt.state[p] = _fresh_state(state, p)
            elif state:
                new_opt.state[p] = {k: (maps[name].index(v).clone() if v.dim() else v.clone())
                                    for k, v in state.items()}
    for name in ("embed", "pos", "blocks", "norm", "head"):
        setattr(model, name, getattr(wide, name))
    return new_opt


def _adam_over(wide: CharTransformer, optimizer: torch.optim.Adam) -> torch.optim.Adam:
    """An Adam over the wider model's parameters with `optimizer`'s hyperparameters and its
    groups' settings (the scheduled rate, initial_lr), no state yet."""
    new_opt = torch.optim.Adam(wide.parameters(), **{
        k: v for k, v in optimizer.defaults.items() if k != "params"})
    for group, old_group in zip(new_opt.param_groups, optimizer.param_groups, strict=True):
        group.update({k: v for k, v in old_group.items() if k != "params"})
    return new_opt


def _fresh_state(state: dict, p: torch.Tensor) -> dict:
    """Adam state for `p` with the old step count (its bias correction) and moments at 0."""
    return {"step": state["step"].clone(), "exp_avg": torch.zeros_like(p),
            "exp_avg_sq": torch.zeros_like(p)}


def _antisymmetric_noise(wide: CharTransformer, d: int, scale: float, g: torch.Generator) -> None:
    """Break the copies' symmetry: +e on a stream writer's first copy, -e on its second (e
    ~ scale x the row's spread), so the two copies' sum is unchanged (a reader splitting
    them evenly sees no change; LayerNorm's mean is kept, its variance moves by e^2)."""
    writers = [wide.embed.weight.T, wide.pos.weight.T]
    for block in wide.blocks:
        writers += [block.self_attn.out_proj.weight, block.linear2.weight]
    for w in writers:  # (2d, fan_in): rows i and i + d are the copies
        e = torch.randn(d, w.shape[1], generator=g) * scale * w[:d].std()
        w[:d] += e
        w[d:] -= e


# ---- growth by k features: Kasmina's residual-stream growth --------------------------------

@torch.no_grad()
def grow_d_model(model: CharTransformer, optimizer: torch.optim.Optimizer | None = None,
                 extra: int = 8, seed: int = 0) -> torch.optim.Optimizer | None:
    """Widen `model`'s d_model by `extra` features (a multiple of the heads), in place and
    exactly, with no tied copies: what this probe built became Kasmina's residual-stream
    growth (esper.kasmina.stream, the WidenStreamAction Esper's heuristic sends), run here
    outside a session and without the stream's width limit. Each new feature starts as the
    mean of the old ones, which every LayerNorm (old gains and eps rescaled) maps to 0;
    readers, new keys, values and MLP units start fresh; new query dims and new units'
    output columns at 0. The optimizer's moments restart for the replaced parameters, step
    count kept (esper.tolaria.optim.swap_parameters). Returns `optimizer`."""
    heads = model.blocks[0].self_attn.num_heads
    if extra <= 0 or extra % heads:
        raise ValueError(f"extra must be a positive multiple of the {heads} heads, got {extra}")
    example = torch.zeros(1, SEQ_LEN, dtype=torch.long, device=model.head.weight.device)
    site = StreamSite(model, model.esper_residual_stream(), example)
    site.max_width = site.width + extra  # the probe sets its own widths
    replaced = site.widen(model, extra, rng_seed=seed, step=0)
    if optimizer is not None:
        swap_parameters(optimizer, replaced)
    return optimizer
