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


def observe_shapes(model: nn.Module, names: list[str], example_input: object) -> dict[str, SlotShape]:
    """Run one no-grad forward with temporary hooks and read every slot's shape."""
    seen: dict[str, SlotShape] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def record(mod, args, out, name=name):
            seen.setdefault(name, shape_from_activation(mod, primary_output(out)))

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
