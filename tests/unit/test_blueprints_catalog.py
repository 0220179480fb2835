"""The built-in catalogue: every blueprint builds for every slot kind it supports, keeps the
slot's shape, is finite in forward and backward, is exactly zero at init, learns, and its
metadata formulas match the built module."""

import pytest
import torch

from esper.blueprints import (
    BlueprintError,
    build_seed,
    builtin_blueprints,
    estimate_flops,
    estimate_params,
    eval_dim,
    example_input,
    get_builtin,
    validate_blueprint,
)
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

# Small widths valid for every built-in (attention needs C divisible by 8 for RoPE).
WIDTHS = (8, 16)
# Blueprints whose seed runs on its own; width blueprints are materialised by Kasmina
# against a host's layers (tests/unit/test_kasmina_widen.py).
STANDALONE = [s for s in builtin_blueprints() if s.family != bp.BLUEPRINT_FAMILY_WIDTH]
WIDTH = [s for s in builtin_blueprints() if s.family == bp.BLUEPRINT_FAMILY_WIDTH]
CASES = [(spec.name, kind, c) for spec in STANDALONE for kind in spec.slot_kinds
         for c in WIDTHS]


def case_id(case):
    name, kind, c = case
    return f"{name}-{common.SlotKind.Name(kind)[10:]}-C{c}"


def test_catalogue_contents():
    specs = builtin_blueprints()
    names = [s.name for s in specs]
    assert len(specs) >= 14 and len(set(names)) == len(names)
    for required in ("BP-MLP-GELU", "BP-MLP-SWIGLU", "BP-LORA-R8", "BP-LORA-R64", "BP-IA3",
                     "BP-NORM-LAYER", "BP-NORM-RMS", "BP-CONV-RES3X3", "BP-CONV-DWSEP",
                     "BP-CONV-SE", "BP-ATTN-MHA", "BP-ATTN-GQA-ROPE", "BP-MOE-TOP2",
                     "BP-DIAG-ACTSTATS", "BP-DIAG-GRADCLAMP"):
        assert required in names
    families = {s.family for s in specs}
    assert families == set(bp.BlueprintFamily.values()) - {bp.BLUEPRINT_FAMILY_UNSPECIFIED}
    for spec in specs:
        validate_blueprint(spec)
        md = spec.metadata
        assert spec.version == "1.0.0"
        assert md.description and md.tags and md.params_formula and md.flops_formula
        assert 0.0 <= md.risk_score <= 1.0
        assert md.memory_footprint_bytes > 0
        if spec.family == bp.BLUEPRINT_FAMILY_ATTENTION:
            assert list(md.requires_capability) == ["sequence"]
        if common.SLOT_KIND_CONV2D in spec.slot_kinds and len(spec.slot_kinds) == 1:
            assert list(md.requires_capability) == ["conv2d"]
    assert get_builtin("BP-LORA-R8").metadata.rank == 8
    assert get_builtin("BP-LORA-R64").metadata.rank == 64


def test_get_builtin_and_copies():
    assert get_builtin("BP-MLP-GELU@1.0.0") == get_builtin("BP-MLP-GELU")
    with pytest.raises(KeyError):
        get_builtin("BP-MLP-GELU@9.9.9")
    with pytest.raises(KeyError):
        get_builtin("BP-NOPE")
    spec = builtin_blueprints()[0]
    spec.name = "MUTATED"
    assert builtin_blueprints()[0].name != "MUTATED"


@pytest.mark.parametrize("spec", WIDTH, ids=lambda s: s.name)
def test_width_formulas_are_the_notional_estimate_and_slots_give_the_real_size(spec):
    for c in (8, 16, 24, 64, 256):
        assert eval_dim(spec.metadata.flops_formula, c) == estimate_flops(spec, c), c
        assert eval_dim(spec.metadata.params_formula, c) == estimate_params(spec, c), c
    units = eval_dim("max(C/2,1)", 32)
    assert estimate_params(spec, 32, widen_per_unit=817) == units * 817
    with pytest.raises(BlueprintError, match="widen_params_per_unit"):
        build_seed(spec, common.SlotShape(kind=common.SLOT_KIND_FEATURES, channels=32))
    request = build_seed(spec, common.SlotShape(kind=common.SLOT_KIND_FEATURES, channels=32,
                                                widen_params_per_unit=817))
    assert not list(request.parameters())
    with pytest.raises(RuntimeError, match="materialised"):
        request(torch.zeros(2, 32))


@pytest.mark.parametrize("spec", STANDALONE, ids=lambda s: s.name)
def test_formulas_match_module_and_estimator(spec):
    for c in (8, 16, 24, 64, 256):
        assert eval_dim(spec.metadata.flops_formula, c) == estimate_flops(spec, c), c
    for c in (8, 24, 64):
        module = build_seed(spec, common.SlotShape(kind=spec.slot_kinds[0], channels=c))
        numel = sum(p.numel() for p in module.parameters())
        assert eval_dim(spec.metadata.params_formula, c) == numel, c


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_builds_preserves_shape_zero_at_init_and_trains(case):
    name, kind, c = case
    spec = get_builtin(name)
    shape = common.SlotShape(kind=kind, channels=c, length=5, height=4, width=3)
    torch.manual_seed(0)
    seed = build_seed(spec, shape)
    x = example_input(shape, batch=3).requires_grad_(True)
    y = seed(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert spec.metadata.function_preserving
    assert torch.equal(y, torch.zeros_like(y)), "function-preserving seed must output exactly 0"

    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all()
    params = [p for p in seed.parameters()]
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if not params:
        return
    assert any(p.grad.abs().sum() > 0 for p in params), "the seed must be able to learn"
    opt = torch.optim.SGD(params, lr=0.1)
    opt.step()
    assert seed(x.detach()).abs().sum() > 0, "one step must move the seed off zero"


@pytest.mark.parametrize("spec", STANDALONE, ids=lambda s: s.name)
def test_build_is_deterministic_and_honours_dtype(spec):
    shape = common.SlotShape(kind=spec.slot_kinds[0], channels=8)
    a = build_seed(spec, shape, seed=7)
    b = build_seed(spec, shape, seed=7, dtype=torch.float64)
    assert list(a.state_dict()) == list(b.state_dict())
    for key, value in a.state_dict().items():
        other = b.state_dict()[key]
        if value.is_floating_point():
            assert other.dtype == torch.float64
            assert torch.equal(value.double(), other), key
        else:
            assert torch.equal(value, other)
    assert all(k.startswith("ops.") for k in a.state_dict())


@pytest.mark.parametrize("spec", STANDALONE, ids=lambda s: s.name)
def test_trains_under_bf16_autocast(spec):
    shape = common.SlotShape(kind=spec.slot_kinds[-1], channels=8)
    seed = build_seed(spec, shape, seed=0)
    with torch.no_grad():
        for p in seed.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = example_input(shape).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = seed(x)
    assert y.shape == x.shape
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in seed.parameters())


def test_unsupported_slot_kind_is_refused():
    from esper.blueprints import BlueprintError

    with pytest.raises(BlueprintError) as exc:
        build_seed(get_builtin("BP-ATTN-MHA"), common.SlotShape(kind=common.SLOT_KIND_FEATURES,
                                                                channels=8))
    assert exc.value.field_path == "shape.kind"
    with pytest.raises(BlueprintError) as exc:
        build_seed(get_builtin("BP-ATTN-GQA-ROPE"),
                   common.SlotShape(kind=common.SLOT_KIND_SEQUENCE, channels=12))
    assert exc.value.field_path == "graph.nodes[1].attrs.num_heads"
