"""Residual-stream growth: widen the stream a host's blocks read and write
(WidenStreamAction), in place and function-preserving.

Seeds grow sub-modules in slots; they cannot make a transformer's residual stream wider,
and at equal compute a wider stream is what a small transformer lacks (measured on the
char host: its own grown architecture trained static scores 1.7 pp below the static model
of the same size with a wider stream). A host that wants its stream grown declares it
with a method returning a `ResidualStream`:

    class MyTransformer(nn.Module):
        def esper_residual_stream(self):
            return ResidualStream(embeddings=("tok", "pos"), blocks=("blocks.0", "blocks.1"),
                                  norms=("norm",), readers=("head",))

Growth by k features, exact (the model computes the same function at that moment):
- every writer's new rows (an embedding's new columns) are the mean of its old ones; the
  stream is a sum of writers, so each new feature equals the old features' mean at every
  layer;
- every LayerNorm over the stream gets its old gains scaled by sqrt(d / (d + k)) and its
  eps by d / (d + k): the mean is unchanged and the variance scaled by d / (d + k), so the
  old features normalise as before and the new ones to exactly 0;
- every reader keeps fresh weights for the new features (it reads them through a norm,
  as 0, at first);
- each block (a pre-norm nn.TransformerEncoderLayer) widens whole, as a block of the new
  width: each head gains k / heads dimensions (new query dimensions start at 0 and the old
  queries are scaled by sqrt(new head dim / old), so every score is unchanged; new keys and
  values fresh, their output columns 0) and the MLP k x (hidden / d) units (fresh inputs,
  output columns 0). Nothing is copied, so nothing is tied.
Fresh weights are those of a module of the new width, drawn from a private generator (the
run's RNG is untouched and every replica would draw the same).

Modules keep their identity (slots, hooks and health monitors keep their references);
their parameters are replaced by new Parameters of the new shapes, and the caller moves
optimizer state (`widen` returns old -> new). The host's output on the example input is
compared before and after: a mismatch (a declared reader that reads the stream without a
norm, say) rolls the widening back and refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# What a widened module's sizes are kept in (copied from a module of the new width).
_SIZE_ATTRS = ("in_features", "out_features", "embedding_dim", "normalized_shape", "embed_dim",
               "kdim", "vdim", "head_dim")
# The widest a stream grows when the host names no limit, as a multiple of its declared
# width (the char host's 32 -> 48 in two steps measured best; benchmarks/morphogenesis.py).
DEFAULT_MAX_GROWTH = 1.5
# Output agreement an exact widening must reach on the example (float32 rounding of the
# rescaled norms stays ~1e-6 of the output's scale).
EXACT_RTOL = 1e-4
HOOK_NAME = "esper_residual_stream"


@dataclass(frozen=True)
class ResidualStream:
    """A host's residual stream, by the qualified names of the modules on it. Every module
    that reads or writes the stream must be named, or the widening is refused (its output
    check fails)."""

    embeddings: tuple[str, ...] = ()  # nn.Embedding whose vectors are added to the stream
    writers: tuple[str, ...] = ()     # nn.Linear whose output is added to the stream
    blocks: tuple[str, ...] = ()      # pre-norm nn.TransformerEncoderLayer (norm_first=True)
    norms: tuple[str, ...] = ()       # nn.LayerNorm over the stream (outside the blocks)
    readers: tuple[str, ...] = ()     # nn.Linear reading the stream after a norm (e.g. the head)
    max_width: int = 0                # the widest it may grow; 0: 1.5x the declared width


class StreamSite:
    """A host's declared stream, checked against the host, and its widenings so far."""

    def __init__(self, host: nn.Module, decl: ResidualStream, example_input: object) -> None:
        self.decl = decl
        self.modules = {name: _get(host, name) for name in
                        (*decl.embeddings, *decl.writers, *decl.blocks, *decl.norms, *decl.readers)}
        self.width = self.declared_width = _check(decl, self.modules)
        heads = {self.modules[b].self_attn.num_heads for b in decl.blocks}
        if len(heads) > 1:
            raise ValueError(f"residual stream: blocks with different head counts {sorted(heads)}")
        self.heads = heads.pop() if heads else 1
        hidden = {self.modules[b].linear1.out_features for b in decl.blocks}
        # k must widen every head evenly and scale every MLP's hidden width to an integer.
        self.feature_multiple = math.lcm(self.heads, *(self.width // math.gcd(self.width, h) for h in hidden))
        limit = decl.max_width or int(DEFAULT_MAX_GROWTH * self.width)
        self.max_width = limit - (limit - self.width) % self.feature_multiple
        if self.max_width < self.width:
            raise ValueError(f"residual stream: max_width {decl.max_width} is below its width {self.width}")
        self.example = example_input
        # Each widening: {"step", "epoch", "from", "to", "params"} (plain data, checkpointed);
        # every count a policy sees is read from it.
        self.history: list[dict] = []
        self._per_feature: tuple[int, int] | None = None  # (width, params_per_feature())

    def names(self) -> tuple[str, ...]:
        return tuple(self.modules)

    @property
    def widenings(self) -> int:
        return len(self.history)

    @property
    def params_added(self) -> int:
        return sum(h["params"] for h in self.history)

    @property
    def last_widened_step(self) -> int:
        return self.history[-1]["step"] if self.history else 0

    @property
    def last_widened_epoch(self) -> int:
        return self.history[-1]["epoch"] if self.history else 0

    def state_dict(self) -> dict:
        """The widenings as plain data (a checkpoint's)."""
        return {"width": self.width, "history": [dict(h) for h in self.history]}

    def load_history(self, state: dict) -> None:
        """Take a checkpoint's widenings once the stream has been widened to its width."""
        self.history = [{k: int(v) for k, v in h.items()} for h in state["history"]]

    def params_per_feature(self) -> int:
        """Trainable parameters one more feature adds at the current width (a widening by
        the feature multiple)."""
        if self._per_feature is not None and self._per_feature[0] == self.width:
            return self._per_feature[1]  # (a snapshot reads it at every safe point)
        k = self.feature_multiple
        per_feature = self._added_by(k) // k
        self._per_feature = (self.width, per_feature)
        return per_feature

    def growth_params(self) -> int:
        """Trainable parameters the stream adds in all growing from its declared width to
        its limit: its widenings so far and what reaching max_width would add (the count
        depends on the width, not on the steps taken to it)."""
        return self.params_added + self._added_by(self.max_width - self.width)

    def _added_by(self, features: int) -> int:
        """Trainable parameters a widening by `features` would add now (modules of the new
        width built on the meta device, counted against the current ones)."""
        if features == 0:
            return 0
        wide = {n: _fresh(self._role(n), m, self.width, features, torch.device("meta"))
                for n, m in self.modules.items()}
        return sum(_count(wide[n]) - _count(m) for n, m in self.modules.items())

    def refusal(self, features: int) -> str | None:
        """Why a widening by `features` is refused, or None."""
        if features <= 0 or features % self.feature_multiple:
            return (f"features {features}: must be a positive multiple of "
                    f"{self.feature_multiple} (heads and hidden widths grow evenly)")
        if self.width + features > self.max_width:
            return (f"features {features}: the stream would be {self.width + features} wide, "
                    f"above its limit {self.max_width}")
        if self.example is None:
            return "no example input was given at wrap time: a widening cannot be checked"
        return None

    @torch.no_grad()
    def widen(self, host: nn.Module, features: int, rng_seed: int, step: int,
              epoch: int = 0) -> dict[nn.Parameter, nn.Parameter]:
        """Widen the stream by `features` in place; returns old parameter -> new one for
        every parameter replaced. Raises ValueError (nothing changed) when refused."""
        why = self.refusal(features)
        if why:
            raise ValueError(why)
        before = _output(host, self.example)
        edits = _Edits()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng_seed)
                for name, module in self.modules.items():
                    role = self._role(name)
                    wide = _fresh(role, module, self.width, features, _device(module))
                    _GROW[role](wide, module, self.width, features)
                    edits.transplant(module, wide)
            after = _output(host, self.example)
            _check_same(before, after)
        except Exception:
            edits.rollback()
            raise
        added = sum(new.numel() - old.numel() for old, new in edits.replaced.items())
        self.history.append({"step": step, "epoch": epoch, "from": self.width,
                             "to": self.width + features, "params": added})
        self.width += features
        return edits.replaced

    def _role(self, name: str) -> str:
        d = self.decl
        for role in ("embeddings", "writers", "blocks", "norms", "readers"):
            if name in getattr(d, role):
                return role
        raise KeyError(name)


# ---- declaration checks ----------------------------------------------------------------------

_TYPES = {"embeddings": nn.Embedding, "writers": nn.Linear, "blocks": nn.TransformerEncoderLayer,
          "norms": nn.LayerNorm, "readers": nn.Linear}


def declared(host: nn.Module) -> ResidualStream | None:
    """The host's declaration (its `esper_residual_stream()`), or None."""
    hook = getattr(host, HOOK_NAME, None)
    if hook is None:
        return None
    decl = hook()
    if not isinstance(decl, ResidualStream):
        raise TypeError(f"{type(host).__name__}.{HOOK_NAME}() returned {type(decl).__name__}, "
                        "not an esper.kasmina.ResidualStream")
    return decl


def _get(host: nn.Module, name: str) -> nn.Module:
    try:
        return host.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"residual stream: no module {name!r} in the host") from exc


def _check(decl: ResidualStream, modules: dict[str, nn.Module]) -> int:
    """The stream's width, after checking every declared module's type and width."""
    if not decl.blocks and not decl.norms:
        raise ValueError("residual stream: declare at least one block or norm")
    widths = {}
    for role, kind in _TYPES.items():
        for name in getattr(decl, role):
            module = modules[name]
            if not isinstance(module, kind):
                raise ValueError(f"residual stream: {role} {name!r} is a {type(module).__name__}, "
                                 f"not an nn.{kind.__name__}")
            widths[name] = _width(role, module, name)
    if len(set(widths.values())) != 1:
        raise ValueError(f"residual stream: the declared modules disagree on its width: {widths}")
    return next(iter(widths.values()))


def _width(role: str, module: nn.Module, name: str) -> int:
    if role == "embeddings":
        return module.embedding_dim
    if role == "writers":
        return module.out_features
    if role == "readers":
        return module.in_features
    if role == "norms":
        if module.weight is None or module.bias is None or len(module.normalized_shape) != 1:
            raise ValueError(f"residual stream: norm {name!r} needs a gain and a bias over one dimension")
        return module.normalized_shape[0]
    if not module.norm_first or not module.self_attn._qkv_same_embed_dim \
            or module.self_attn.in_proj_bias is None or module.linear1.bias is None:
        raise ValueError(f"residual stream: block {name!r} must be pre-norm (norm_first=True) "
                         "with biases and one packed query/key/value projection")
    return module.self_attn.embed_dim


# ---- modules of the new width ------------------------------------------------------------

def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _fresh(role: str, module: nn.Module, d: int, k: int, device: torch.device) -> nn.Module:
    """A freshly initialised module of `module`'s kind and geometry, d + k wide on the stream."""
    dtype = next(module.parameters()).dtype
    kw = {"device": device, "dtype": dtype}
    if isinstance(module, nn.Embedding):
        return nn.Embedding(module.num_embeddings, d + k, **kw)
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(d + k, **kw)
    if isinstance(module, nn.TransformerEncoderLayer):
        hidden = module.linear1.out_features * (d + k) // d
        return nn.TransformerEncoderLayer(d + k, module.self_attn.num_heads, hidden, dropout=0.0,
                                          batch_first=True, norm_first=True, **kw)
    bias = module.bias is not None
    if role == "readers":
        return nn.Linear(d + k, module.out_features, bias=bias, **kw)
    return nn.Linear(module.in_features, d + k, bias=bias, **kw)  # a writer


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _mean_rows(old: torch.Tensor, k: int) -> torch.Tensor:
    """Rows (or a bias) for d + k stream features: the old ones, then k of their mean."""
    return torch.cat([old, old.mean(dim=0, keepdim=True).expand(k, *old.shape[1:])])


def _grow_embedding(new: nn.Embedding, old: nn.Embedding, d: int, k: int) -> None:
    new.weight.copy_(_mean_rows(old.weight.T, k).T)


def _grow_writer(new: nn.Linear, old: nn.Linear, d: int, k: int) -> None:
    new.weight.copy_(_mean_rows(old.weight, k))
    if old.bias is not None:
        new.bias.copy_(_mean_rows(old.bias, k))


def _grow_reader(new: nn.Linear, old: nn.Linear, d: int, k: int) -> None:
    new.weight[:, :d] = old.weight  # the new columns keep their fresh values
    if old.bias is not None:
        new.bias.copy_(old.bias)


def _grow_norm(new: nn.LayerNorm, old: nn.LayerNorm, d: int, k: int) -> None:
    new.weight[:d] = old.weight * math.sqrt(d / (d + k))
    new.weight[d:] = 1.0
    new.bias[:d] = old.bias
    new.bias[d:] = 0.0
    new.eps = old.eps * d / (d + k)


def _head_index(d: int, k: int, heads: int) -> torch.Tensor:
    """New position of each old per-head dimension when every head widens by k / heads."""
    hd, wide = d // heads, (d + k) // heads
    old = torch.arange(d)
    return (old // hd) * wide + old % hd


def _grow_attention(new: nn.MultiheadAttention, old: nn.MultiheadAttention, d: int, k: int) -> None:
    D, idx = d + k, _head_index(d, k, old.num_heads)
    q_scale = math.sqrt((D // old.num_heads) / (d // old.num_heads))
    w, b = old.in_proj_weight, old.in_proj_bias
    for part in range(3):  # queries, keys, values
        rows, scale = part * D + idx.to(w.device), q_scale if part == 0 else 1.0
        new.in_proj_weight[rows, :d] = w[part * d:(part + 1) * d] * scale
        new.in_proj_bias[rows] = b[part * d:(part + 1) * d] * scale
    fresh_q = torch.ones(D, dtype=torch.bool, device=w.device)
    fresh_q[idx] = False
    new.in_proj_weight[:D][fresh_q] = 0.0
    new.in_proj_bias[:D][fresh_q] = 0.0
    out = torch.zeros(d, D, dtype=w.dtype, device=w.device)
    out[:, idx] = old.out_proj.weight
    new.out_proj.weight.copy_(_mean_rows(out, k))
    new.out_proj.bias.copy_(_mean_rows(old.out_proj.bias, k))


def _grow_block(new: nn.TransformerEncoderLayer, old: nn.TransformerEncoderLayer, d: int, k: int) -> None:
    _grow_norm(new.norm1, old.norm1, d, k)
    _grow_norm(new.norm2, old.norm2, d, k)
    _grow_attention(new.self_attn, old.self_attn, d, k)
    hidden = old.linear1.out_features
    new.linear1.weight[:hidden, :d] = old.linear1.weight
    new.linear1.bias[:hidden] = old.linear1.bias
    out = torch.zeros(d, new.linear2.in_features, dtype=old.linear2.weight.dtype,
                      device=old.linear2.weight.device)
    out[:, :hidden] = old.linear2.weight  # new units write through zero columns at first
    new.linear2.weight.copy_(_mean_rows(out, k))
    new.linear2.bias.copy_(_mean_rows(old.linear2.bias, k))


_GROW: dict[str, Callable] = {"embeddings": _grow_embedding, "writers": _grow_writer,
                              "blocks": _grow_block, "norms": _grow_norm, "readers": _grow_reader}


class _Edits:
    """Parameters and size attributes moved from wide modules into the host's own, each
    remembered so a refused widening can be undone."""

    def __init__(self) -> None:
        self.undo: list[tuple[nn.Module, str, object, bool]] = []
        self.replaced: dict[nn.Parameter, nn.Parameter] = {}

    def transplant(self, module: nn.Module, wide: nn.Module) -> None:
        for (_, sub), (_, src) in zip(module.named_modules(), wide.named_modules(), strict=True):
            for name, p in src.named_parameters(recurse=False):
                old = getattr(sub, name)
                if old.shape == p.shape:  # its values are kept too (a reader's bias)
                    continue
                new = nn.Parameter(p.detach().clone(), requires_grad=old.requires_grad)
                self.undo.append((sub, name, old, True))
                setattr(sub, name, new)
                self.replaced[old] = new
            for attr in (*_SIZE_ATTRS, "eps"):
                if hasattr(src, attr) and hasattr(sub, attr) and attr in vars(sub):
                    self.undo.append((sub, attr, getattr(sub, attr), False))
                    setattr(sub, attr, getattr(src, attr))

    def rollback(self) -> None:
        for sub, name, old, _ in reversed(self.undo):
            setattr(sub, name, old)
        self.undo.clear()
        self.replaced.clear()


def _output(host: nn.Module, example: object) -> torch.Tensor:
    was = host.training
    try:
        host.eval()
        out = host(*example) if isinstance(example, tuple) else host(example)
    finally:
        host.train(was)
    if not isinstance(out, torch.Tensor):
        raise ValueError("residual stream: the host's output is not a tensor; a widening cannot be checked")
    return out.detach().float()


def _check_same(before: torch.Tensor, after: torch.Tensor) -> None:
    scale = float(before.abs().max()) if before.numel() else 0.0
    gap = float((after - before).abs().max()) if after.shape == before.shape else math.inf
    if not gap <= EXACT_RTOL * (1.0 + scale):
        raise ValueError(f"widening the residual stream changed the host's output by {gap:.3g} "
                         "(not function-preserving: is every module that reads or writes the "
                         "stream declared, and does every reader read it through a declared norm?)")
