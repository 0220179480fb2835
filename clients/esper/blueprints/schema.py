"""The op vocabulary as data: inputs, typed attributes and legal slot kinds per OpType.

This table is the executable form of the OpType comments in
proto/esper/leyline/v1/blueprint.proto; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

# Attribute kinds: "dim" (int_value or dim_expr in C), "int", "float" (float_value or
# int_value), "bool", "str" (string_value from `choices`).
DIM, INT, FLOAT, BOOL, STR = "dim", "int", "float", "bool", "str"

# Largest convolution kernel: bigger kernels are not seeds, and k**2 * C**2 grows fast.
MAX_KERNEL_SIZE = 15
# Most experts in one MoE op: each expert is a full MLP, memory grows linearly.
MAX_EXPERTS = 64
# Most attention heads: head_dim = C / heads, so more heads than this are never useful.
MAX_HEADS = 256
# Most inputs of one ADD: a wide sum is a sign of a generated/hostile graph.
MAX_INPUTS = 8

INIT_CHOICES = ("default", "zeros")
ALL_KINDS = (
    common.SLOT_KIND_FEATURES,
    common.SLOT_KIND_SEQUENCE,
    common.SLOT_KIND_CONV1D,
    common.SLOT_KIND_CONV2D,
)
# Slot kinds with tokens or space to pool over.
POOLABLE_KINDS = (common.SLOT_KIND_SEQUENCE, common.SLOT_KIND_CONV1D, common.SLOT_KIND_CONV2D)


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    required: bool = False
    default: object = None
    choices: tuple = ()
    # Inclusive numeric bounds (None = unbounded); floats must also be finite.
    low: float | None = None
    high: float | None = None
    # Exclusive upper bound for floats like dropout p.
    high_exclusive: bool = False


@dataclass(frozen=True)
class OpSchema:
    min_inputs: int = 1
    max_inputs: int = 1
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    slot_kinds: tuple = ALL_KINDS


_INIT = AttrSpec(STR, default="default", choices=INIT_CHOICES)
_BIAS = AttrSpec(BOOL, default=True)
_CONV_ATTRS = {
    "out_channels": AttrSpec(DIM, required=True, low=1),
    "kernel_size": AttrSpec(INT, required=True, low=1, high=MAX_KERNEL_SIZE),
    "groups": AttrSpec(DIM, default=1, low=1),
    "padding": AttrSpec(STR, default="same", choices=("same",)),
    "bias": _BIAS,
    "init": _INIT,
}
_CAUSAL = AttrSpec(BOOL, default=False)

OP_SCHEMAS: dict[int, OpSchema] = {
    bp.OP_TYPE_LINEAR: OpSchema(attrs={
        "out_features": AttrSpec(DIM, required=True, low=1), "bias": _BIAS, "init": _INIT}),
    bp.OP_TYPE_CONV2D: OpSchema(attrs=_CONV_ATTRS, slot_kinds=(common.SLOT_KIND_CONV2D,)),
    bp.OP_TYPE_CONV1D: OpSchema(attrs=_CONV_ATTRS, slot_kinds=(common.SLOT_KIND_CONV1D,)),
    bp.OP_TYPE_LAYER_NORM: OpSchema(attrs={
        "eps": AttrSpec(FLOAT, default=1e-5, low=1e-12, high=1.0), "init": _INIT}),
    bp.OP_TYPE_RMS_NORM: OpSchema(attrs={"eps": AttrSpec(FLOAT, default=1e-6, low=1e-12, high=1.0)}),
    bp.OP_TYPE_GELU: OpSchema(),
    bp.OP_TYPE_SILU: OpSchema(),
    bp.OP_TYPE_RELU: OpSchema(),
    bp.OP_TYPE_SIGMOID: OpSchema(),
    bp.OP_TYPE_ADD: OpSchema(min_inputs=2, max_inputs=MAX_INPUTS),
    bp.OP_TYPE_MUL: OpSchema(min_inputs=2, max_inputs=2),
    bp.OP_TYPE_CHANNEL_SCALE: OpSchema(attrs={
        "init_value": AttrSpec(FLOAT, default=1.0, low=-1e6, high=1e6)}),
    bp.OP_TYPE_GLOBAL_AVG_POOL: OpSchema(slot_kinds=POOLABLE_KINDS),
    bp.OP_TYPE_SELF_ATTENTION: OpSchema(attrs={
        "num_heads": AttrSpec(INT, required=True, low=1, high=MAX_HEADS),
        "causal": _CAUSAL, "init": _INIT}, slot_kinds=(common.SLOT_KIND_SEQUENCE,)),
    bp.OP_TYPE_GQA_ROPE: OpSchema(attrs={
        "num_heads": AttrSpec(INT, required=True, low=1, high=MAX_HEADS),
        "num_kv_heads": AttrSpec(INT, required=True, low=1, high=MAX_HEADS),
        "causal": _CAUSAL, "init": _INIT}, slot_kinds=(common.SLOT_KIND_SEQUENCE,)),
    bp.OP_TYPE_MOE: OpSchema(attrs={
        "num_experts": AttrSpec(INT, required=True, low=2, high=MAX_EXPERTS),
        "top_k": AttrSpec(INT, required=True, low=1, high=MAX_EXPERTS),
        "hidden": AttrSpec(DIM, required=True, low=1), "init": _INIT}),
    bp.OP_TYPE_ACTIVATION_MONITOR: OpSchema(attrs={
        "momentum": AttrSpec(FLOAT, default=0.1, low=1e-6, high=1.0)}),
    bp.OP_TYPE_GRAD_NORM_CLAMP: OpSchema(attrs={
        "max_norm": AttrSpec(FLOAT, required=True, low=1e-12, high=1e12)}),
    bp.OP_TYPE_DROPOUT: OpSchema(attrs={
        "p": AttrSpec(FLOAT, default=0.1, low=0.0, high=1.0, high_exclusive=True)}),
    bp.OP_TYPE_SCALAR_GATE: OpSchema(attrs={
        "init_value": AttrSpec(FLOAT, default=0.0, low=-1e6, high=1e6),
        "trainable": AttrSpec(BOOL, default=True)}),
    # Width growth: materialised by Kasmina against the host's layers (see OP_TYPE_WIDEN).
    bp.OP_TYPE_WIDEN: OpSchema(attrs={"units": AttrSpec(DIM, required=True, low=1)},
                               slot_kinds=(common.SLOT_KIND_FEATURES, common.SLOT_KIND_CONV2D)),
}


def op_name(op: int) -> str:
    """``OP_TYPE_LINEAR`` for a known op, ``<unknown op 99>`` otherwise."""
    try:
        return bp.OpType.Name(op)
    except ValueError:
        return f"<unknown op {op}>"


def kind_name(kind: int) -> str:
    try:
        return common.SlotKind.Name(kind)
    except ValueError:
        return f"<unknown slot kind {kind}>"
