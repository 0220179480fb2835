"""Blueprint validation: every error names the offending field."""

import pytest

from esper.blueprints import BlueprintError, estimate_params, resolve_for_shape, validate_blueprint
from esper.blueprints.dsl import Dim, graph, node
from esper.blueprints.graph import MAX_BUILD_PARAMS, MAX_NODES
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

FEATURES, CONV2D = common.SLOT_KIND_FEATURES, common.SLOT_KIND_CONV2D


def mlp_spec(**overrides) -> bp.BlueprintSpec:
    g = graph(node("fc1", bp.OP_TYPE_LINEAR, "input", out_features=Dim("2*C")),
              node("act", bp.OP_TYPE_RELU, "fc1"),
              node("fc2", bp.OP_TYPE_LINEAR, "act", out_features=Dim("C"), init="zeros"))
    fields = {"name": "BP-TEST", "version": "1.0.0", "family": bp.BLUEPRINT_FAMILY_MLP,
                  "slot_kinds": [FEATURES], "graph": g}
    fields.update(overrides)
    return bp.BlueprintSpec(**fields)


def field_of(spec: bp.BlueprintSpec) -> str:
    with pytest.raises(BlueprintError) as exc:
        validate_blueprint(spec)
    return exc.value.field_path


def test_valid_spec_resolves_with_params_and_order():
    resolved = validate_blueprint(mlp_spec())
    assert [n.id for n in resolved.nodes] == ["fc1", "act", "fc2"]
    c = resolved.channels
    assert resolved.params == (c * 2 * c + 2 * c) + (2 * c * c + c)
    assert estimate_params(mlp_spec(), 8) == 8 * 16 + 16 + 16 * 8 + 8


def test_unknown_op_names_the_node():
    spec = mlp_spec()
    spec.graph.nodes[1].op = 999
    with pytest.raises(BlueprintError, match="unknown op") as exc:
        validate_blueprint(spec)
    assert exc.value.field_path == "graph.nodes[1].op"
    spec.graph.nodes[1].op = bp.OP_TYPE_UNSPECIFIED
    assert field_of(spec) == "graph.nodes[1].op"


def test_cycle_is_named():
    g = graph(node("a", bp.OP_TYPE_LINEAR, "c", out_features=Dim("C")),
              node("b", bp.OP_TYPE_RELU, "a"),
              node("c", bp.OP_TYPE_GELU, "b"),
              node("out", bp.OP_TYPE_ADD, "input", "c"))
    with pytest.raises(BlueprintError) as exc:
        validate_blueprint(mlp_spec(graph=g))
    assert exc.value.field_path == "graph.nodes"
    assert "cycle" in exc.value.message
    for name in ("a", "b", "c"):
        assert name in exc.value.message
    self_loop = graph(node("a", bp.OP_TYPE_ADD, "input", "a"))
    with pytest.raises(BlueprintError, match="cycle: a -> a"):
        validate_blueprint(mlp_spec(graph=self_loop))


def test_wrong_attribute_type_names_op_and_attribute():
    spec = mlp_spec()
    spec.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(string_value="big"))
    with pytest.raises(BlueprintError, match="OP_TYPE_LINEAR expects an integer") as exc:
        validate_blueprint(spec)
    assert exc.value.field_path == "graph.nodes[0].attrs.out_features"
    spec = mlp_spec()
    spec.graph.nodes[2].attrs["bias"].CopyFrom(bp.AttrValue(int_value=1))
    assert field_of(spec) == "graph.nodes[2].attrs.bias"
    spec = mlp_spec()
    spec.graph.nodes[2].attrs["init"].CopyFrom(bp.AttrValue(string_value="ones"))
    assert field_of(spec) == "graph.nodes[2].attrs.init"
    spec = mlp_spec()
    spec.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue())
    assert field_of(spec) == "graph.nodes[0].attrs.out_features"


def test_missing_unknown_and_bad_expression_attributes():
    spec = mlp_spec()
    del spec.graph.nodes[0].attrs["out_features"]
    with pytest.raises(BlueprintError, match="required by OP_TYPE_LINEAR"):
        validate_blueprint(spec)
    spec = mlp_spec()
    spec.graph.nodes[1].attrs["alpha"].CopyFrom(bp.AttrValue(float_value=1.0))
    with pytest.raises(BlueprintError, match="unknown attribute for OP_TYPE_RELU"):
        validate_blueprint(spec)
    spec = mlp_spec()
    spec.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(dim_expr="C/(C-C)"))
    with pytest.raises(BlueprintError, match="division by zero") as exc:
        validate_blueprint(spec)
    assert exc.value.field_path == "graph.nodes[0].attrs.out_features"


def test_float_attribute_range_and_finiteness():
    g = graph(node("drop", bp.OP_TYPE_DROPOUT, "input", p=1.0))
    with pytest.raises(BlueprintError, match="below 1.0") as exc:
        validate_blueprint(mlp_spec(graph=g))
    assert exc.value.field_path == "graph.nodes[0].attrs.p"
    g = graph(node("clamp", bp.OP_TYPE_GRAD_NORM_CLAMP, "input", max_norm=float("nan")))
    with pytest.raises(BlueprintError, match="not finite"):
        validate_blueprint(mlp_spec(graph=g))


def test_missing_input_names_the_input():
    spec = mlp_spec()
    spec.graph.nodes[2].inputs[0] = "nope"
    assert field_of(spec) == "graph.nodes[2].inputs[0]"
    spec = mlp_spec()
    del spec.graph.nodes[1].inputs[:]
    with pytest.raises(BlueprintError, match="takes 1 inputs, got 0"):
        validate_blueprint(spec)


def test_ids_output_and_dead_nodes():
    spec = mlp_spec()
    spec.graph.nodes[1].id = "fc1"
    assert field_of(spec) == "graph.nodes[1].id"
    for bad in ("input", "Fc", "a.b", "", "training", "x" * 40):
        spec = mlp_spec()
        spec.graph.nodes[0].id = bad
        assert field_of(spec) == "graph.nodes[0].id", bad
    assert field_of(mlp_spec(graph=graph(*mlp_spec().graph.nodes, output="zzz"))) == "graph.output"
    dead = graph(node("unused", bp.OP_TYPE_GELU, "input"), *mlp_spec().graph.nodes)
    with pytest.raises(BlueprintError, match="does not feed the output") as exc:
        validate_blueprint(mlp_spec(graph=dead))
    assert exc.value.field_path == "graph.nodes[0]"
    assert field_of(mlp_spec(graph=bp.OpGraph())) == "graph.nodes"


def test_output_must_keep_the_slot_shape():
    g = graph(node("fc1", bp.OP_TYPE_LINEAR, "input", out_features=Dim("2*C")))
    with pytest.raises(BlueprintError, match="width 512") as exc:
        validate_blueprint(mlp_spec(graph=g))
    assert exc.value.field_path == "graph.output"
    pooled = graph(node("pool", bp.OP_TYPE_GLOBAL_AVG_POOL, "input"))
    with pytest.raises(BlueprintError, match="pooled"):
        validate_blueprint(mlp_spec(graph=pooled, slot_kinds=[CONV2D],
                                    family=bp.BLUEPRINT_FAMILY_CONV))


def test_shape_mismatches_name_the_node():
    g = graph(node("wide", bp.OP_TYPE_LINEAR, "input", out_features=Dim("2*C")),
              node("sum", bp.OP_TYPE_ADD, "input", "wide"))
    with pytest.raises(BlueprintError, match="one width") as exc:
        validate_blueprint(mlp_spec(graph=g))
    assert exc.value.field_path == "graph.nodes[1].inputs"
    g = graph(node("conv", bp.OP_TYPE_CONV2D, "input", out_channels=Dim("C"), kernel_size=3,
                   groups=3))
    with pytest.raises(BlueprintError, match="does not divide") as exc:
        validate_blueprint(mlp_spec(graph=g, slot_kinds=[CONV2D]))
    assert exc.value.field_path == "graph.nodes[0].attrs.groups"
    g = graph(node("attn", bp.OP_TYPE_SELF_ATTENTION, "input", num_heads=3))
    with pytest.raises(BlueprintError) as exc:
        validate_blueprint(mlp_spec(graph=g, slot_kinds=[common.SLOT_KIND_SEQUENCE]))
    assert exc.value.field_path == "graph.nodes[0].attrs.num_heads"


def test_op_must_be_legal_for_every_slot_kind():
    g = graph(node("conv", bp.OP_TYPE_CONV2D, "input", out_channels=Dim("C"), kernel_size=3))
    with pytest.raises(BlueprintError, match="not allowed in SLOT_KIND_FEATURES") as exc:
        validate_blueprint(mlp_spec(graph=g, slot_kinds=[CONV2D, FEATURES]))
    assert exc.value.field_path == "graph.nodes[0].op"
    g = graph(node("attn", bp.OP_TYPE_SELF_ATTENTION, "input", num_heads=4))
    assert field_of(mlp_spec(graph=g, slot_kinds=[CONV2D])) == "graph.nodes[0].op"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "bp-lower"}, "name"),
        ({"version": "1.0"}, "version"),
        ({"version": "v1.0.0"}, "version"),
        ({"family": bp.BLUEPRINT_FAMILY_UNSPECIFIED}, "family"),
        ({"family": 77}, "family"),
        ({"slot_kinds": []}, "slot_kinds"),
        ({"slot_kinds": [FEATURES, FEATURES]}, "slot_kinds[1]"),
        ({"slot_kinds": [common.SLOT_KIND_UNSPECIFIED]}, "slot_kinds[0]"),
        ({"metadata": bp.BlueprintMetadata(params_formula="C*")}, "metadata.params_formula"),
        ({"metadata": bp.BlueprintMetadata(flops_formula="0-C")}, "metadata.flops_formula"),
        ({"metadata": bp.BlueprintMetadata(risk_score=1.5)}, "metadata.risk_score"),
        ({"metadata": bp.BlueprintMetadata(risk_score=float("nan"))}, "metadata.risk_score"),
        ({"metadata": bp.BlueprintMetadata(tags=["ok", ""])}, "metadata.tags[1]"),
        ({"metadata": bp.BlueprintMetadata(capacity_factor=-1.0)}, "metadata.capacity_factor"),
    ],
)
def test_spec_fields(overrides, field):
    assert field_of(mlp_spec(**overrides)) == field


def test_absurd_sizes_are_refused_before_allocation():
    huge_dim = mlp_spec()
    huge_dim.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(int_value=10**9))
    with pytest.raises(BlueprintError, match="exceeds the maximum 65536") as exc:
        validate_blueprint(huge_dim)
    assert exc.value.field_path == "graph.nodes[0].attrs.out_features"

    square = graph(node("fc1", bp.OP_TYPE_LINEAR, "input", out_features=Dim("C*C")),
                   node("mid", bp.OP_TYPE_LINEAR, "fc1", out_features=Dim("C*C")),
                   node("fc2", bp.OP_TYPE_LINEAR, "mid", out_features=Dim("C")))
    with pytest.raises(BlueprintError, match="parameter count to 4,311,875,584 at C=256") as exc:
        validate_blueprint(mlp_spec(graph=square))  # 65536 x 65536 at C=256
    assert exc.value.field_path == "graph.nodes[1]"

    too_many = graph(*[node(f"n{i}", bp.OP_TYPE_RELU, f"n{i - 1}" if i else "input")
                       for i in range(MAX_NODES + 1)])
    with pytest.raises(BlueprintError, match="exceed the limit") as exc:
        validate_blueprint(mlp_spec(graph=too_many))
    assert exc.value.field_path == "graph.nodes"

    experts = graph(node("moe", bp.OP_TYPE_MOE, "input", num_experts=1000, top_k=2,
                         hidden=Dim("4*C")))
    assert field_of(mlp_spec(graph=experts)) == "graph.nodes[0].attrs.num_experts"


def test_build_time_limits_use_the_real_width():
    spec = mlp_spec()
    spec.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(dim_expr="16*C"))
    validate_blueprint(spec)  # fine at the reference width
    with pytest.raises(BlueprintError, match="65536"):
        resolve_for_shape(spec, common.SlotShape(kind=FEATURES, channels=8192))
    wide = mlp_spec()
    wide.graph.nodes[0].attrs["out_features"].CopyFrom(bp.AttrValue(int_value=65536))
    with pytest.raises(BlueprintError, match=f"{MAX_BUILD_PARAMS:,}"):
        resolve_for_shape(wide, common.SlotShape(kind=FEATURES, channels=16384))


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        (common.SlotShape(kind=common.SLOT_KIND_UNSPECIFIED, channels=8), "shape.kind"),
        (common.SlotShape(kind=FEATURES, channels=0), "shape.channels"),
        (common.SlotShape(kind=FEATURES, channels=70000), "shape.channels"),
        (common.SlotShape(kind=CONV2D, channels=8), "shape.kind"),  # spec is FEATURES only
    ],
)
def test_slot_shape_checks(shape, field):
    with pytest.raises(BlueprintError) as exc:
        resolve_for_shape(mlp_spec(), shape)
    assert exc.value.field_path == field


def test_reserved_node_ids_cover_every_module_dict_attribute_of_this_torch():
    import torch

    from esper.blueprints.graph import MODULE_DICT_ATTRIBUTES, NODE_ID_RE

    shadowing = {n for n in dir(torch.nn.ModuleDict()) if NODE_ID_RE.match(n)}
    assert shadowing <= MODULE_DICT_ATTRIBUTES, sorted(shadowing - MODULE_DICT_ATTRIBUTES)
