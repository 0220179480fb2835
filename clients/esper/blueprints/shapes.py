"""Shape inference, parameter counts and FLOP estimates per op, at a concrete width C.

Every tensor in a seed graph has the slot's layout; what varies is its channel width and
whether it was pooled (tokens/space reduced to 1, kept for broadcasting).

FLOPs are per position (a token, a pixel, or a sample for FEATURES), forward only:
2 per multiply-accumulate of matmuls/convs, +1 per output element for a bias, 1 per element
for element-wise ops and activations, ``*_NORM_FLOPS`` per element for norms. Ops on pooled
tensors run once per sample, not per position, so they count 0 (amortised). The
sequence-length-dependent attention-score term (about 4*T*C) is not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.blueprints.errors import BlueprintError
from esper.leyline.v1 import blueprint_pb2 as bp

# Per-element forward FLOPs of a LayerNorm: mean, centre, square, variance, normalise, scale, shift.
LAYER_NORM_FLOPS = 7
# Per-element forward FLOPs of an RMSNorm: square, mean, normalise, scale.
RMS_NORM_FLOPS = 4
# Per-element FLOPs of applying rotary embeddings: two multiplies and an add.
ROPE_FLOPS = 3


@dataclass(frozen=True)
class Act:
    """A tensor in the graph: its channel width and whether it was pooled."""

    channels: int
    pooled: bool = False


@dataclass(frozen=True)
class OpCost:
    out: Act
    params: int
    flops: int


def infer(op: int, a: dict, ins: list[Act], path: str, spatial_dims: int,
          widen_per_unit: int = 0) -> OpCost:
    """Output shape, parameter count and per-position FLOPs of one op. `widen_per_unit`:
    the slot's SlotShape.widen_params_per_unit (OP_TYPE_WIDEN only)."""
    if op == bp.OP_TYPE_WIDEN:
        return _widen(a, ins, path, widen_per_unit)
    cost = _RULES[op](a, ins, path, spatial_dims)
    if ins and all(x.pooled for x in ins) and op != bp.OP_TYPE_GLOBAL_AVG_POOL:
        cost = OpCost(cost.out, cost.params, 0)
    return cost


def _widen(a, ins, path, per_unit: int) -> OpCost:
    """Width growth adds `units` rows to the host layer and as many input columns to the
    next one: per_unit parameters each, a multiply-add per parameter per position."""
    if per_unit <= 0:
        raise BlueprintError("shape.widen_params_per_unit",
                             "this slot's layer cannot be widened in place (no Linear/Conv2d "
                             "read through channel-wise ops follows it)")
    params = a["units"] * per_unit
    return OpCost(ins[0], params, 2 * params)


def _same(flops_per_elem: int = 1):
    def rule(a, ins, path, sd):
        return OpCost(ins[0], 0, flops_per_elem * ins[0].channels)
    return rule


def _linear(a, ins, path, sd):
    cin, cout = ins[0].channels, a["out_features"]
    bias = cout if a["bias"] else 0
    return OpCost(Act(cout, ins[0].pooled), cin * cout + bias, 2 * cin * cout + bias)


def _conv(a, ins, path, sd):
    cin, cout, g = ins[0].channels, a["out_channels"], a["groups"]
    if cin % g:
        raise BlueprintError(f"{path}.attrs.groups", f"{g} does not divide the {cin} input channels")
    if cout % g:
        raise BlueprintError(f"{path}.attrs.groups", f"{g} does not divide out_channels {cout}")
    k = a["kernel_size"]
    if k % 2 == 0:
        raise BlueprintError(f"{path}.attrs.kernel_size", f"{k} must be odd for padding 'same'")
    weights = (cin // g) * cout * k**sd
    bias = cout if a["bias"] else 0
    return OpCost(Act(cout, ins[0].pooled), weights + bias, 2 * weights + bias)


def _layer_norm(a, ins, path, sd):
    c = ins[0].channels
    return OpCost(ins[0], 2 * c, LAYER_NORM_FLOPS * c)


def _rms_norm(a, ins, path, sd):
    c = ins[0].channels
    return OpCost(ins[0], c, RMS_NORM_FLOPS * c)


def _add(a, ins, path, sd):
    widths = {x.channels for x in ins}
    if len(widths) != 1:
        raise BlueprintError(f"{path}.inputs", f"ADD needs inputs of one width, got {sorted(widths)}")
    out = Act(ins[0].channels, all(x.pooled for x in ins))
    return OpCost(out, 0, (len(ins) - 1) * out.channels)


def _mul(a, ins, path, sd):
    x, y = ins
    if x.channels != y.channels and 1 not in (x.channels, y.channels):
        raise BlueprintError(f"{path}.inputs",
                             f"MUL needs equal widths (or one of width 1), got {x.channels} and {y.channels}")
    out = Act(max(x.channels, y.channels), x.pooled and y.pooled)
    return OpCost(out, 0, out.channels)


def _channel_scale(a, ins, path, sd):
    return OpCost(ins[0], ins[0].channels, ins[0].channels)


def _pool(a, ins, path, sd):
    return OpCost(Act(ins[0].channels, True), 0, ins[0].channels)


def _heads(a, c: int, path: str) -> int:
    heads = a["num_heads"]
    if c % heads:
        raise BlueprintError(f"{path}.attrs.num_heads", f"{heads} does not divide the width {c}")
    return c // heads


def _self_attention(a, ins, path, sd):
    c = ins[0].channels
    _heads(a, c, path)
    params = (c * 3 * c + 3 * c) + (c * c + c)
    return OpCost(ins[0], params, 2 * params - 4 * c)


def _gqa_rope(a, ins, path, sd):
    c = ins[0].channels
    head_dim = _heads(a, c, path)
    kv_heads = a["num_kv_heads"]
    if kv_heads > a["num_heads"] or a["num_heads"] % kv_heads:
        raise BlueprintError(f"{path}.attrs.num_kv_heads",
                             f"{kv_heads} must divide num_heads {a['num_heads']}")
    if head_dim % 2:
        raise BlueprintError(f"{path}.attrs.num_heads",
                             f"head dim {head_dim} (= {c}/{a['num_heads']}) must be even for RoPE")
    kv = kv_heads * head_dim
    params = 2 * c * c + 2 * c * kv
    return OpCost(ins[0], params, 2 * params + ROPE_FLOPS * (c + kv))


def _moe(a, ins, path, sd):
    c, e, k, h = ins[0].channels, a["num_experts"], a["top_k"], a["hidden"]
    if k > e:
        raise BlueprintError(f"{path}.attrs.top_k", f"{k} exceeds num_experts {e}")
    expert_params = c * h + h + h * c + c
    # router matmul + k experts (two matmuls, biases, activation) + weighting and sum of k outputs
    flops = 2 * c * e + k * (2 * c * h + h + h + 2 * h * c + c) + 2 * k * c
    return OpCost(ins[0], c * e + e * expert_params, flops)


def _scalar_gate(a, ins, path, sd):
    return OpCost(ins[0], 1 if a["trainable"] else 0, ins[0].channels)


_RULES = {
    bp.OP_TYPE_LINEAR: _linear,
    bp.OP_TYPE_CONV2D: _conv,
    bp.OP_TYPE_CONV1D: _conv,
    bp.OP_TYPE_LAYER_NORM: _layer_norm,
    bp.OP_TYPE_RMS_NORM: _rms_norm,
    bp.OP_TYPE_GELU: _same(),
    bp.OP_TYPE_SILU: _same(),
    bp.OP_TYPE_RELU: _same(),
    bp.OP_TYPE_SIGMOID: _same(),
    bp.OP_TYPE_ADD: _add,
    bp.OP_TYPE_MUL: _mul,
    bp.OP_TYPE_CHANNEL_SCALE: _channel_scale,
    bp.OP_TYPE_GLOBAL_AVG_POOL: _pool,
    bp.OP_TYPE_SELF_ATTENTION: _self_attention,
    bp.OP_TYPE_GQA_ROPE: _gqa_rope,
    bp.OP_TYPE_MOE: _moe,
    bp.OP_TYPE_ACTIVATION_MONITOR: _same(0),
    bp.OP_TYPE_GRAD_NORM_CLAMP: _same(0),
    bp.OP_TYPE_DROPOUT: _same(),
    bp.OP_TYPE_SCALAR_GATE: _scalar_gate,
}
