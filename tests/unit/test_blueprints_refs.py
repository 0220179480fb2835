"""name@semver references."""

import pytest

from esper.blueprints import BlueprintError, format_ref, get_builtin, graph_digest, parse_ref


def test_round_trip():
    assert parse_ref("BP-MLP-GELU@1.0.0") == ("BP-MLP-GELU", "1.0.0")
    assert format_ref("BP-LORA-R8", "2.10.3-rc.1+build.5") == "BP-LORA-R8@2.10.3-rc.1+build.5"


@pytest.mark.parametrize(
    ("ref", "field"),
    [
        ("BP-MLP-GELU", "ref"),
        ("BP@1@2", "ref"),
        ("bp-mlp@1.0.0", "ref.name"),
        ("@1.0.0", "ref.name"),
        ("BP-MLP@1.0", "ref.version"),
        ("BP-MLP@01.0.0", "ref.version"),
        ("BP-MLP@1.0.0 ", "ref.version"),
        ("BP MLP@1.0.0", "ref.name"),
        ("B" * 100 + "@1.0.0", "ref.name"),
    ],
)
def test_bad_refs_name_the_part(ref, field):
    with pytest.raises(BlueprintError) as exc:
        parse_ref(ref)
    assert exc.value.field_path == field


def test_graph_digest_is_canonical_and_sensitive():
    a, b = get_builtin("BP-MLP-GELU"), get_builtin("BP-MLP-GELU")
    b.metadata.description = "metadata does not change the graph digest"
    assert graph_digest(a) == graph_digest(b)
    b.graph.nodes[0].attrs["out_features"].dim_expr = "2*C"
    assert graph_digest(a) != graph_digest(b)


def test_graph_digest_ignores_attribute_insertion_order():
    from esper.blueprints.dsl import node
    from esper.leyline.v1 import blueprint_pb2 as bp

    one = bp.BlueprintSpec()
    one.graph.nodes.append(node("fc", bp.OP_TYPE_LINEAR, "input", out_features=4, bias=False))
    two = bp.BlueprintSpec()
    two.graph.nodes.append(node("fc", bp.OP_TYPE_LINEAR, "input", bias=False, out_features=4))
    assert graph_digest(one) == graph_digest(two)
