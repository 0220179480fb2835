"""Every op of the vocabulary, through small custom graphs, in the layouts it supports."""

import pytest
import torch
import torch.nn.functional as F

from esper.blueprints import (
    BlueprintError,
    build_seed,
    example_input,
    get_builtin,
    resolve_for_shape,
)
from esper.blueprints.dsl import Dim, graph, node
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

FEATURES, SEQUENCE = common.SLOT_KIND_FEATURES, common.SLOT_KIND_SEQUENCE
CONV1D, CONV2D = common.SLOT_KIND_CONV1D, common.SLOT_KIND_CONV2D
ALL = (FEATURES, SEQUENCE, CONV1D, CONV2D)


def seed_for(kind, c, *nodes, output=None, seed=0):
    spec = bp.BlueprintSpec(name="BP-OPTEST", version="0.1.0", family=bp.BLUEPRINT_FAMILY_MLP,
                            slot_kinds=[kind], graph=graph(*nodes, output=output))
    return build_seed(spec, common.SlotShape(kind=kind, channels=c, length=6, height=3, width=4),
                      seed=seed)


def sample(kind, c, batch=2):
    torch.manual_seed(1)
    return example_input(common.SlotShape(kind=kind, channels=c, length=6, height=3, width=4),
                         batch=batch)


@pytest.mark.parametrize("kind", ALL)
def test_linear_acts_on_the_channel_dim(kind):
    seed = seed_for(kind, 6, node("fc", bp.OP_TYPE_LINEAR, "input", out_features=Dim("C")))
    x = sample(kind, 6)
    w, b = seed.ops["fc"].weight, seed.ops["fc"].bias
    if kind in (CONV1D, CONV2D):
        conv = F.conv2d if kind == CONV2D else F.conv1d
        want = conv(x, w.view(6, 6, *([1] * (x.dim() - 2))), b)
    else:
        want = F.linear(x, w, b)
    torch.testing.assert_close(seed(x), want)


@pytest.mark.parametrize("kind", ALL)
def test_norms_and_scales_act_on_the_channel_dim(kind):
    x = sample(kind, 8) * 3 + 1
    cdim = 1 if kind in (CONV1D, CONV2D) else -1
    ln = seed_for(kind, 8, node("n", bp.OP_TYPE_LAYER_NORM, "input", eps=1e-5))(x)
    torch.testing.assert_close(ln.mean(cdim), torch.zeros_like(ln.mean(cdim)), atol=1e-5, rtol=0)
    rms = seed_for(kind, 8, node("n", bp.OP_TYPE_RMS_NORM, "input"))(x)
    torch.testing.assert_close(rms.pow(2).mean(cdim), torch.ones_like(rms.mean(cdim)), atol=1e-3,
                               rtol=0)
    scale = seed_for(kind, 8, node("s", bp.OP_TYPE_CHANNEL_SCALE, "input", init_value=1.0))
    with torch.no_grad():
        scale.ops["s"].scale.copy_(torch.arange(8.0))
    y = scale(x)
    for ch in range(8):
        torch.testing.assert_close(y.select(cdim, ch), x.select(cdim, ch) * ch)


def test_zero_init_layer_norm_outputs_zero():
    y = seed_for(FEATURES, 8, node("n", bp.OP_TYPE_LAYER_NORM, "input", init="zeros"))(sample(FEATURES, 8))
    assert torch.equal(y, torch.zeros_like(y))


@pytest.mark.parametrize(("op", "fn"), [(bp.OP_TYPE_GELU, F.gelu), (bp.OP_TYPE_SILU, F.silu),
                                        (bp.OP_TYPE_RELU, F.relu), (bp.OP_TYPE_SIGMOID, torch.sigmoid)])
def test_activations(op, fn):
    x = sample(SEQUENCE, 4)
    torch.testing.assert_close(seed_for(SEQUENCE, 4, node("a", op, "input"))(x), fn(x))


def test_add_mul_and_pool_broadcast():
    x = sample(CONV2D, 4)
    add = seed_for(CONV2D, 4, node("r", bp.OP_TYPE_RELU, "input"),
                   node("s", bp.OP_TYPE_ADD, "input", "r", "input"))
    torch.testing.assert_close(add(x), 2 * x + F.relu(x))
    se = seed_for(CONV2D, 4, node("p", bp.OP_TYPE_GLOBAL_AVG_POOL, "input"),
                  node("m", bp.OP_TYPE_MUL, "input", "p"))
    torch.testing.assert_close(se(x), x * x.mean((2, 3), keepdim=True))
    seq = sample(SEQUENCE, 4)
    pooled = seed_for(SEQUENCE, 4, node("p", bp.OP_TYPE_GLOBAL_AVG_POOL, "input"),
                      node("s", bp.OP_TYPE_ADD, "input", "p"))
    torch.testing.assert_close(pooled(seq), seq + seq.mean(1, keepdim=True))
    width_one = seed_for(FEATURES, 4, node("g", bp.OP_TYPE_LINEAR, "input", out_features=1),
                         node("m", bp.OP_TYPE_MUL, "g", "input"))
    f = sample(FEATURES, 4)
    torch.testing.assert_close(width_one(f), width_one.ops["g"](f) * f)


def test_conv_ops_with_groups():
    seed = seed_for(CONV1D, 8, node("c", bp.OP_TYPE_CONV1D, "input", out_channels=Dim("C"),
                                    kernel_size=5, groups=Dim("C/4"), bias=False))
    x = sample(CONV1D, 8)
    conv = seed.ops["c"]
    assert conv.weight.shape == (8, 4, 5) and conv.bias is None
    torch.testing.assert_close(seed(x), F.conv1d(x, conv.weight, padding=2, groups=2))
    zero = seed_for(CONV2D, 8, node("c", bp.OP_TYPE_CONV2D, "input", out_channels=Dim("C"),
                                    kernel_size=3, init="zeros"))
    assert torch.equal(zero(sample(CONV2D, 8)), torch.zeros(2, 8, 3, 4))


@pytest.mark.parametrize("op", [bp.OP_TYPE_SELF_ATTENTION, bp.OP_TYPE_GQA_ROPE])
def test_attention_is_causal_when_asked(op):
    extra = {"num_kv_heads": 1} if op == bp.OP_TYPE_GQA_ROPE else {}
    seed = seed_for(SEQUENCE, 8, node("a", op, "input", num_heads=2, causal=True, **extra))
    x = sample(SEQUENCE, 8)
    y = seed(x)
    x2 = x.clone()
    x2[:, -1] += 5.0  # change only the last token
    y2 = seed(x2)
    torch.testing.assert_close(y[:, :-1], y2[:, :-1])
    assert not torch.allclose(y[:, -1], y2[:, -1])
    bidirectional = seed_for(SEQUENCE, 8, node("a", op, "input", num_heads=2, **extra))
    assert not torch.allclose(bidirectional(x)[:, 0], bidirectional(x2)[:, 0])


def test_self_attention_matches_reference():
    seed = seed_for(SEQUENCE, 8, node("a", bp.OP_TYPE_SELF_ATTENTION, "input", num_heads=2))
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    attn = seed.ops["a"]
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = sample(SEQUENCE, 8)
    torch.testing.assert_close(seed(x), mha(x, x, x, need_weights=False)[0])


def test_moe_routes_each_position_to_its_top_k_experts():
    seed = seed_for(SEQUENCE, 4, node("m", bp.OP_TYPE_MOE, "input", num_experts=3, top_k=2,
                                      hidden=Dim("2*C")))
    moe = seed.ops["m"]
    x = sample(SEQUENCE, 4)
    want = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            v = x[b, t]
            logits = moe.router(v)
            top = logits.topk(2)
            for w, e in zip(top.values.softmax(-1), top.indices):
                h = F.gelu(moe.w_in[e] @ v + moe.b_in[e])
                want[b, t] += w * (moe.w_out[e] @ h + moe.b_out[e])
    torch.testing.assert_close(seed(x), want)
    conv = seed_for(CONV2D, 4, node("m", bp.OP_TYPE_MOE, "input", num_experts=2, top_k=1,
                                    hidden=4))
    assert conv(sample(CONV2D, 4)).shape == (2, 4, 3, 4)


def test_activation_monitor_records_statistics_in_training_only():
    seed = seed_for(CONV2D, 3, node("m", bp.OP_TYPE_ACTIVATION_MONITOR, "input", momentum=0.5))
    x = F.relu(sample(CONV2D, 3))
    seed.eval()
    assert torch.equal(seed(x), x)
    monitor = seed.ops["m"]
    assert int(monitor.steps) == 0
    seed.train()
    assert torch.equal(seed(x), x)
    flat = x.movedim(1, -1).reshape(-1, 3)
    torch.testing.assert_close(monitor.mean, flat.mean(0))
    torch.testing.assert_close(monitor.var, flat.var(0, unbiased=False))
    torch.testing.assert_close(monitor.dead_fraction, (flat == 0).float().mean())
    seed(torch.zeros_like(x))
    torch.testing.assert_close(monitor.mean, flat.mean(0) * 0.5)
    assert int(monitor.steps) == 2
    assert set(seed.state_dict()) == {"ops.m.mean", "ops.m.var", "ops.m.dead_fraction",
                                      "ops.m.steps"}


def test_grad_norm_clamp():
    seed = seed_for(FEATURES, 4, node("c", bp.OP_TYPE_GRAD_NORM_CLAMP, "input", max_norm=1.0))
    x = sample(FEATURES, 4).requires_grad_(True)
    y = seed(x)
    assert torch.equal(y, x)
    g = torch.full_like(x, 3.0)
    y.backward(g)
    torch.testing.assert_close(torch.linalg.vector_norm(x.grad), torch.tensor(1.0))
    torch.testing.assert_close(x.grad, g / torch.linalg.vector_norm(g))
    x.grad = None
    seed(x).backward(g * 1e-3)  # already small: untouched
    torch.testing.assert_close(x.grad, g * 1e-3)


def test_gradclamp_blueprint_clamps_the_host_gradient_at_full_blend():
    shape = common.SlotShape(kind=FEATURES, channels=4)
    seed = build_seed(get_builtin("BP-DIAG-GRADCLAMP"), shape)
    host = sample(FEATURES, 4).requires_grad_(True)
    out = host + 1.0 * seed(host)
    assert torch.equal(out, host)
    out.backward(torch.full_like(host, 10.0))
    torch.testing.assert_close(torch.linalg.vector_norm(host.grad), torch.tensor(1.0))


def test_dropout_and_scalar_gate():
    drop = seed_for(FEATURES, 64, node("d", bp.OP_TYPE_DROPOUT, "input", p=0.5))
    x = torch.ones(4, 64)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    assert (drop(x) == 0).any()
    fixed = seed_for(FEATURES, 4, node("g", bp.OP_TYPE_SCALAR_GATE, "input", init_value=-1.0,
                                       trainable=False))
    assert not list(fixed.parameters()) and "ops.g.gate" in fixed.state_dict()
    torch.testing.assert_close(fixed(x[:, :4]), -x[:, :4])
    learned = seed_for(FEATURES, 4, node("g", bp.OP_TYPE_SCALAR_GATE, "input"))
    assert [n for n, _ in learned.named_parameters()] == ["ops.g.gate"]
    assert torch.equal(learned(x[:, :4]), torch.zeros(4, 4))


def test_widen_is_alone_sized_by_the_slot_and_never_runs_unmaterialised():
    with pytest.raises(BlueprintError, match="only node"):
        seed_for(FEATURES, 8, node("w", bp.OP_TYPE_WIDEN, "input", units=4),
                 node("r", bp.OP_TYPE_RELU, "w"))
    with pytest.raises(BlueprintError, match="widen_params_per_unit"):
        seed_for(FEATURES, 8, node("w", bp.OP_TYPE_WIDEN, "input", units=4))
    spec = bp.BlueprintSpec(name="BP-OPTEST", version="0.1.0", family=bp.BLUEPRINT_FAMILY_WIDTH,
                            slot_kinds=[FEATURES],
                            graph=graph(node("w", bp.OP_TYPE_WIDEN, "input", units=Dim("C/2"))))
    shape = common.SlotShape(kind=FEATURES, channels=8, widen_params_per_unit=21)
    request = build_seed(spec, shape)
    assert request.ops["w"].units == 4 and not list(request.parameters())
    assert resolve_for_shape(spec, shape).params == 4 * 21
    with pytest.raises(RuntimeError, match="materialised"):
        request(torch.zeros(2, 8))


def test_every_op_is_exercised():
    """Guards this file: a new OpType must get a test here."""
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for name in bp.OpType.keys():  # noqa: SIM118 (protobuf enum wrappers are not iterable)
        if name != "OP_TYPE_UNSPECIFIED":
            assert f"bp.{name}" in source, name
