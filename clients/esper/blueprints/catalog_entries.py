"""The built-in blueprints as data. Formulas: see esper.blueprints.catalog."""

from __future__ import annotations

from esper.blueprints.dsl import Dim, graph, node
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

VERSION = "1.0.0"
FEATURES, SEQUENCE = common.SLOT_KIND_FEATURES, common.SLOT_KIND_SEQUENCE
CONV1D, CONV2D = common.SLOT_KIND_CONV1D, common.SLOT_KIND_CONV2D
ALL_KINDS = [FEATURES, SEQUENCE, CONV1D, CONV2D]
# Risk at or below this is safe to germinate without human review.
SAFE_RISK = 0.3


def _spec(name, family, kinds, g, *, params, flops, risk, description, tags,
          mergeable=False, capability=(), rank=0, capacity=1.0) -> bp.BlueprintSpec:
    md = bp.BlueprintMetadata(
        params_formula=params, flops_formula=flops, rank=rank, capacity_factor=capacity,
        mergeable=mergeable, requires_capability=list(capability), risk_score=risk,
        is_safe_action=risk <= SAFE_RISK, function_preserving=True, tags=list(tags),
        description=description)
    return bp.BlueprintSpec(name=name, version=VERSION, family=family, slot_kinds=kinds,
                            graph=g, metadata=md)


def mlp_gelu():
    g = graph(node("fc1", bp.OP_TYPE_LINEAR, "input", out_features=Dim("4*C")),
              node("act", bp.OP_TYPE_GELU, "fc1"),
              node("fc2", bp.OP_TYPE_LINEAR, "act", out_features=Dim("C"), init="zeros"))
    return _spec("BP-MLP-GELU", bp.BLUEPRINT_FAMILY_MLP, [FEATURES, SEQUENCE], g,
                 params="8*C*C + 5*C", flops="16*C*C + 9*C", risk=0.25, capacity=4.0,
                 tags=["mlp", "gelu", "residual"],
                 description="Residual MLP branch C -> 4C -> C with GELU; the output "
                 "projection starts at zero.")


def mlp_swiglu():
    h = "(8*C/3)"
    g = graph(node("gate", bp.OP_TYPE_LINEAR, "input", out_features=Dim(h), bias=False),
              node("up", bp.OP_TYPE_LINEAR, "input", out_features=Dim(h), bias=False),
              node("act", bp.OP_TYPE_SILU, "gate"),
              node("prod", bp.OP_TYPE_MUL, "act", "up"),
              node("down", bp.OP_TYPE_LINEAR, "prod", out_features=Dim("C"), bias=False,
                   init="zeros"))
    return _spec("BP-MLP-SWIGLU", bp.BLUEPRINT_FAMILY_MLP, [FEATURES, SEQUENCE], g,
                 params=f"3*C*{h}", flops=f"6*C*{h} + 2*{h}", risk=0.25, capacity=8 / 3,
                 tags=["mlp", "swiglu", "gated", "residual"],
                 description="Residual SwiGLU MLP branch (hidden 8C/3, no biases); the down "
                 "projection starts at zero.")


def lora(rank: int):
    def entry():
        g = graph(node("down", bp.OP_TYPE_LINEAR, "input", out_features=rank, bias=False),
                  node("up", bp.OP_TYPE_LINEAR, "down", out_features=Dim("C"), bias=False,
                       init="zeros"))
        return _spec(f"BP-LORA-R{rank}", bp.BLUEPRINT_FAMILY_ADAPTER, [FEATURES, SEQUENCE], g,
                     params=f"{2 * rank}*C", flops=f"{4 * rank}*C", rank=rank, mergeable=True,
                     risk=0.1 if rank <= 8 else 0.15, tags=["lora", "low-rank", "adapter"],
                     description=f"Low-rank adapter delta = B A x of rank {rank}; B starts at "
                     "zero. Linear in x, so it merges into the host layer when fossilized.")
    return entry


def ia3():
    g = graph(node("scale", bp.OP_TYPE_CHANNEL_SCALE, "input", init_value=0.0))
    return _spec("BP-IA3", bp.BLUEPRINT_FAMILY_ADAPTER, ALL_KINDS, g, params="C", flops="C",
                 mergeable=True, risk=0.05, tags=["ia3", "scaling", "adapter"],
                 description="IA3 per-channel rescaling x * s written as the delta x * (s - 1); "
                 "the learned (s - 1) starts at zero. Merges into the host layer.")


def layer_norm():
    g = graph(node("norm", bp.OP_TYPE_LAYER_NORM, "input"),
              node("gate", bp.OP_TYPE_SCALAR_GATE, "norm", init_value=0.0))
    return _spec("BP-NORM-LAYER", bp.BLUEPRINT_FAMILY_NORM, ALL_KINDS, g, params="2*C + 1",
                 flops="8*C", risk=0.1, tags=["norm", "layernorm"],
                 description="Gated LayerNorm over channels: delta = g * LayerNorm(x), g starts "
                 "at zero.")


def rms_norm():
    g = graph(node("norm", bp.OP_TYPE_RMS_NORM, "input"),
              node("gate", bp.OP_TYPE_SCALAR_GATE, "norm", init_value=0.0))
    return _spec("BP-NORM-RMS", bp.BLUEPRINT_FAMILY_NORM, ALL_KINDS, g, params="C + 1",
                 flops="5*C", risk=0.1, tags=["norm", "rmsnorm"],
                 description="Gated RMSNorm over channels: delta = g * RMSNorm(x), g starts at "
                 "zero.")


def conv_res3x3():
    g = graph(node("conv1", bp.OP_TYPE_CONV2D, "input", out_channels=Dim("C"), kernel_size=3),
              node("act", bp.OP_TYPE_RELU, "conv1"),
              node("conv2", bp.OP_TYPE_CONV2D, "act", out_channels=Dim("C"), kernel_size=3,
                   init="zeros"))
    return _spec("BP-CONV-RES3X3", bp.BLUEPRINT_FAMILY_CONV, [CONV2D], g,
                 params="18*C*C + 2*C", flops="36*C*C + 3*C", risk=0.25, capability=["conv2d"],
                 tags=["conv", "residual", "3x3"],
                 description="Residual branch conv3x3 -> ReLU -> conv3x3 (same padding); the "
                 "second conv starts at zero. FLOPs per pixel.")


def conv1d_res3():
    g = graph(node("conv1", bp.OP_TYPE_CONV1D, "input", out_channels=Dim("C"), kernel_size=3),
              node("act", bp.OP_TYPE_RELU, "conv1"),
              node("conv2", bp.OP_TYPE_CONV1D, "act", out_channels=Dim("C"), kernel_size=3,
                   init="zeros"))
    return _spec("BP-CONV1D-RES3", bp.BLUEPRINT_FAMILY_CONV, [CONV1D], g,
                 params="6*C*C + 2*C", flops="12*C*C + 3*C", risk=0.25, capability=["conv1d"],
                 tags=["conv", "conv1d", "residual"],
                 description="Residual 1-D branch conv3 -> ReLU -> conv3 (same padding); the "
                 "second conv starts at zero. FLOPs per position.")


def conv_dwsep():
    g = graph(node("depthwise", bp.OP_TYPE_CONV2D, "input", out_channels=Dim("C"), kernel_size=3,
                   groups=Dim("C")),
              node("act", bp.OP_TYPE_GELU, "depthwise"),
              node("pointwise", bp.OP_TYPE_CONV2D, "act", out_channels=Dim("C"), kernel_size=1,
                   init="zeros"))
    return _spec("BP-CONV-DWSEP", bp.BLUEPRINT_FAMILY_CONV, [CONV2D], g,
                 params="C*C + 11*C", flops="2*C*C + 21*C", risk=0.2, capability=["conv2d"],
                 tags=["conv", "depthwise", "separable"],
                 description="Depthwise-separable residual branch: depthwise 3x3 -> GELU -> "
                 "pointwise 1x1, the pointwise conv starting at zero.")


def squeeze_excitation():
    r = "max(C/16,4)"
    g = graph(node("pool", bp.OP_TYPE_GLOBAL_AVG_POOL, "input"),
              node("fc1", bp.OP_TYPE_LINEAR, "pool", out_features=Dim(r)),
              node("act", bp.OP_TYPE_RELU, "fc1"),
              node("fc2", bp.OP_TYPE_LINEAR, "act", out_features=Dim("C")),
              node("excite", bp.OP_TYPE_SIGMOID, "fc2"),
              node("scaled", bp.OP_TYPE_MUL, "input", "excite"),
              node("gate", bp.OP_TYPE_SCALAR_GATE, "scaled", init_value=0.0))
    return _spec("BP-CONV-SE", bp.BLUEPRINT_FAMILY_CONV, [CONV2D], g,
                 params=f"2*C*{r} + {r} + C + 1", flops="3*C", risk=0.15,
                 capability=["conv2d"], tags=["conv", "squeeze-excitation", "channel-attention"],
                 description="Squeeze-excitation: delta = g * x * sigmoid(W2 relu(W1 avgpool(x))), "
                 "reduction max(C/16, 4), g starts at zero. The pooled MLP runs once per image.")


def attention_mha():
    g = graph(node("norm", bp.OP_TYPE_LAYER_NORM, "input"),
              node("attn", bp.OP_TYPE_SELF_ATTENTION, "norm", num_heads=4, init="zeros"))
    return _spec("BP-ATTN-MHA", bp.BLUEPRINT_FAMILY_ATTENTION, [SEQUENCE], g,
                 params="4*C*C + 6*C", flops="8*C*C + 11*C", risk=0.4, capability=["sequence"],
                 tags=["attention", "multi-head", "pre-norm"],
                 description="Pre-norm 4-head self-attention (C divisible by 4); the output "
                 "projection starts at zero. FLOPs exclude the T-dependent score term 4*T*C.")


def attention_gqa_rope():
    kv = "(2*(C/4))"
    g = graph(node("norm", bp.OP_TYPE_RMS_NORM, "input"),
              node("attn", bp.OP_TYPE_GQA_ROPE, "norm", num_heads=4, num_kv_heads=2,
                   init="zeros"))
    return _spec("BP-ATTN-GQA-ROPE", bp.BLUEPRINT_FAMILY_ATTENTION, [SEQUENCE], g,
                 params=f"C + 2*C*C + 2*C*{kv}", flops=f"4*C + 4*C*C + 4*C*{kv} + 3*(C + {kv})",
                 risk=0.4, capability=["sequence"], tags=["attention", "gqa", "rope", "pre-norm"],
                 description="Pre-RMSNorm grouped-query attention, 4 query heads sharing 2 "
                 "key/value heads, rotary positions (C divisible by 8); the output projection "
                 "starts at zero. FLOPs exclude the T-dependent score term.")


def moe_top2():
    g = graph(node("norm", bp.OP_TYPE_LAYER_NORM, "input"),
              node("moe", bp.OP_TYPE_MOE, "norm", num_experts=4, top_k=2, hidden=Dim("2*C"),
                   init="zeros"))
    return _spec("BP-MOE-TOP2", bp.BLUEPRINT_FAMILY_MOE, [FEATURES, SEQUENCE], g,
                 params="16*C*C + 18*C", flops="16*C*C + 29*C", risk=0.5, capacity=1.0,
                 tags=["moe", "top-2", "experts", "sparse"],
                 description="Pre-norm mixture of 4 GELU MLP experts (C -> 2C -> C), each "
                 "position routed to its top 2 (dropless); expert outputs start at zero.")


def activation_monitor():
    g = graph(node("monitor", bp.OP_TYPE_ACTIVATION_MONITOR, "input"),
              node("mute", bp.OP_TYPE_SCALAR_GATE, "monitor", init_value=0.0, trainable=False))
    return _spec("BP-DIAG-ACTSTATS", bp.BLUEPRINT_FAMILY_DIAGNOSTIC, ALL_KINDS, g, params="0",
                 flops="C", risk=0.0, tags=["diagnostic", "monitor", "statistics"],
                 description="Records running per-channel mean/variance and the dead fraction "
                 "of the slot activation in buffers; contributes exactly zero (fixed zero gate).")


def grad_clamp():
    g = graph(node("clamp", bp.OP_TYPE_GRAD_NORM_CLAMP, "input", max_norm=1.0),
              node("negate", bp.OP_TYPE_SCALAR_GATE, "input", init_value=-1.0, trainable=False),
              node("delta", bp.OP_TYPE_ADD, "clamp", "negate"))
    return _spec("BP-DIAG-GRADCLAMP", bp.BLUEPRINT_FAMILY_DIAGNOSTIC, ALL_KINDS, g, params="0",
                 flops="2*C", risk=0.05, tags=["diagnostic", "stabiliser", "gradient-clipping"],
                 description="delta = clamp(x) - x: exactly zero forward; in backward, at "
                 "alpha = 1, the gradient reaching the host activation has its L2 norm clamped "
                 "to 1.0 (when the seed sees the activation undetached).")


def widen_half():
    g = graph(node("widen", bp.OP_TYPE_WIDEN, "input", units=Dim("max(C/2,1)")))
    # The formulas are notional (a C -> C layer followed by another: 2C+1 parameters per
    # unit); the real size is units * SlotShape.widen_params_per_unit of the slot.
    return _spec("BP-WIDEN-HALF", bp.BLUEPRINT_FAMILY_WIDTH, [FEATURES, CONV2D], g,
                 params="max(C/2,1)*(2*C+1)", flops="max(C/2,1)*(4*C+2)", risk=0.15,
                 capacity=1.5, tags=["width", "widen", "net2net", "function-preserving"],
                 description="Widens the slot's Linear or Conv2d layer in place by C/2 units "
                 "(and the next layer's inputs by as many): the new units' outgoing weights "
                 "start at zero. Fossilized, it is a plain wider layer (unwrap() merges it).")


ENTRIES = (
    mlp_gelu, mlp_swiglu, lora(8), lora(64), ia3, layer_norm, rms_norm, conv_res3x3,
    conv1d_res3, conv_dwsep, squeeze_excitation, attention_mha, attention_gqa_rope, moe_top2,
    widen_half,
    activation_monitor, grad_clamp,
)
