"""name@semver references."""

import pytest
from esper.blueprints import BlueprintError, format_ref, parse_ref


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
