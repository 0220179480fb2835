"""Which modules can host a seed slot, and the activation shape each slot sees."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from esper.leyline.v1.common_pb2 import Dtype, SlotKind, SlotShape

# Module types a slot may follow, in the order they are matched.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm,
)
ELIGIBLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention, nn.TransformerEncoderLayer,
    *NORM_TYPES,
)
# Blocks whose fused fast paths call their children's weights directly, bypassing their
# forward (and so any hook): a slot may follow the block, never a module inside it.
FUSED_BLOCKS: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
)

# Probe sizes used when no example input was given and a dimension is unknown.
DEFAULT_PROBE_LENGTH = 4

TORCH_TO_DTYPE = {
    torch.float32: Dtype.DTYPE_FLOAT32,
    torch.float16: Dtype.DTYPE_FLOAT16,
    torch.bfloat16: Dtype.DTYPE_BFLOAT16,
    torch.float64: Dtype.DTYPE_FLOAT64,
}


@dataclass
class SlotSite:
    """Where a slot sits: the module name, the module, and its activation shape."""

    node_id: str
    module: nn.Module
    shape: SlotShape
    device: torch.device
    dtype: torch.dtype
    widen: object = None  # esper.kasmina.widen.WidenSite when the layer can be widened


def is_eligible(module: nn.Module) -> bool:
    return isinstance(module, ELIGIBLE_TYPES)


def fused_descendants(model: nn.Module) -> set[str]:
    """Names of modules inside fused blocks (never eligible)."""
    inside: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, FUSED_BLOCKS):
            for child, _ in module.named_modules(prefix=name):
                if child != name:
                    inside.add(child)
    return inside


def channels_of(module: nn.Module) -> int:
    """The channel width C of the module's output, from its type."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.out_channels
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    if isinstance(module, nn.TransformerEncoderLayer):
        return module.self_attn.embed_dim
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return int(module.normalized_shape[-1])
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    raise TypeError(f"{type(module).__name__} cannot host a seed slot")


def default_kind(module: nn.Module) -> int:
    """The slot kind implied by the module type alone (refined by a probe forward)."""
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.GroupNorm)):
        return SlotKind.SLOT_KIND_CONV2D
    if isinstance(module, nn.Conv1d):
        return SlotKind.SLOT_KIND_CONV1D
    if isinstance(module, (nn.MultiheadAttention, nn.TransformerEncoderLayer)):
        return SlotKind.SLOT_KIND_SEQUENCE
    return SlotKind.SLOT_KIND_FEATURES


def primary_output(output: object) -> torch.Tensor:
    """The activation tensor of a module output (attention returns (out, weights))."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def shape_from_activation(module: nn.Module, act: torch.Tensor) -> SlotShape:
    """SlotShape read from an observed activation of `module`."""
    channels = channels_of(module)
    conv_like = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d,
                                    nn.GroupNorm))
    if act.dim() == 4:
        return SlotShape(kind=SlotKind.SLOT_KIND_CONV2D, channels=channels,
                         height=act.shape[2], width=act.shape[3])
    if act.dim() == 3 and conv_like:
        return SlotShape(kind=SlotKind.SLOT_KIND_CONV1D, channels=channels, length=act.shape[2])
    if act.dim() == 3:
        length = act.shape[1] if _batch_first(module) else act.shape[0]
        return SlotShape(kind=SlotKind.SLOT_KIND_SEQUENCE, channels=channels, length=length)
    return SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=channels)


def _batch_first(module: nn.Module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return module.batch_first
    if isinstance(module, nn.TransformerEncoderLayer):
        return module.self_attn.batch_first
    return True


def probe_shape(shape: SlotShape, batch: int = 2) -> tuple[int, ...]:
    """A concrete activation shape for probing a seed built for `shape`."""
    c = shape.channels
    if shape.kind == SlotKind.SLOT_KIND_CONV2D:
        return (batch, c, shape.height or DEFAULT_PROBE_LENGTH, shape.width or DEFAULT_PROBE_LENGTH)
    if shape.kind == SlotKind.SLOT_KIND_CONV1D:
        return (batch, c, shape.length or DEFAULT_PROBE_LENGTH)
    if shape.kind == SlotKind.SLOT_KIND_SEQUENCE:
        return (batch, shape.length or DEFAULT_PROBE_LENGTH, c)
    return (batch, c)


def module_device_dtype(module: nn.Module, fallback: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the module's first parameter (or of the model's)."""
    for source in (module, fallback):
        for p in source.parameters():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


# A sequence slot mixes later positions in when its earlier positions change by more than
# this fraction of its last position's change (attention spreads a change over ~1/tokens,
# far above it for the lengths a CPU probe uses; a longer bidirectional input read as causal
# only costs its seeds the look-ahead).
MIXING_TOLERANCE = 1e-3


def observe_shapes(model: nn.Module, names: list[str], example_input: object) -> dict[str, SlotShape]:
    """Run no-grad forwards with temporary hooks: read every slot's shape, and for each
    sequence slot whether it is causal (SlotShape.causal): causal unless a second forward,
    with the input's last position changed, shows the slot's earlier positions changing
    too. A slot the probe cannot judge stays causal: a causal seed on a bidirectional host
    only sees less, while a seed that looks ahead in a causal model reads its targets."""
    first = _observe(model, names, example_input)
    seen = {name: shape for name, (shape, _) in first.items()}
    sequence = {name: act for name, (shape, act) in first.items()
                if shape.kind == SlotKind.SLOT_KIND_SEQUENCE}
    for name in sequence:
        seen[name].causal = True
    later = _with_last_position_changed(example_input, {a.shape[1] for a in sequence.values()})
    if later is not None:
        second = _observe(model, list(sequence), later)
        for name, act in sequence.items():
            mixes = _mixes_later(act, second[name][1]) if name in second else None
            if mixes is not None:
                seen[name].causal = not mixes
    return seen


def _observe(model: nn.Module, names: list[str], example_input: object) -> dict[str, tuple]:
    """name -> (SlotShape, the activation as (batch, tokens, C) for a sequence slot, else
    None), from one no-grad eval-mode forward."""
    seen: dict[str, tuple] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def record(mod, args, out, name=name):
            if name in seen:
                return
            act = primary_output(out)
            shape = shape_from_activation(mod, act)
            if shape.kind == SlotKind.SLOT_KIND_SEQUENCE:
                act = (act if _batch_first(mod) else act.transpose(0, 1)).detach().double()
            else:
                act = None
            seen[name] = (shape, act)

        handles.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _with_last_position_changed(example_input: object, lengths: set[int]) -> object | None:
    """The example input with the last position of its first (batch, tokens, ...) tensor
    changed (a token id swapped for another the input holds; a float input shifted by an
    uneven amount), or None when no argument has a token dimension of a sequence slot's
    length."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    for i, x in enumerate(args):
        if not (isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] in lengths):
            continue
        changed = x.clone()
        last = x[:, -1]
        if x.is_floating_point():  # uneven across features: a norm would erase a constant
            ramp = torch.linspace(0.5, 1.5, last[0].numel(), dtype=x.dtype, device=x.device)
            changed[:, -1] = last + ramp.reshape(last.shape[1:])
        else:
            lo, hi = x.min(), x.max()
            if lo == hi:
                return None  # one token value throughout: nothing to swap it for
            changed[:, -1] = torch.where(last == lo, hi, lo)
        out = (*args[:i], changed, *args[i + 1:])
        return out if isinstance(example_input, tuple) else out[0]
    return None


def _mixes_later(before: torch.Tensor, after: torch.Tensor) -> bool | None:
    """Whether a (batch, tokens, C) activation's earlier positions changed when only the
    input's last position did; None when the change did not reach the last position of
    every sequence in the batch (the probe changed something else than that position).
    Changes below MIXING_TOLERANCE of the last position's are rounding (nondeterministic
    kernels on an accelerator), which errs on the causal side."""
    if before.shape != after.shape or before.shape[1] < 2:
        return None
    diff = (after - before).abs().amax(dim=2)  # (batch, tokens)
    reached = diff[:, -1]
    if not bool((reached > 0).all()):
        return None
    return bool((diff[:, :-1] > MIXING_TOLERANCE * reached.max()).any())
