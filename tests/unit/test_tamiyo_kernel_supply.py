"""Pure logic of Tamiyo's kernel supply (which kernels a run needs) and of the heuristic
thresholds file."""

from __future__ import annotations

import pytest

from esper.blueprints import builtin_blueprints
from esper.leyline.v1 import common_pb2
from esper.leyline.v1.signals_pb2 import ModelGraph, SlotInfo
from esper.leyline.v1.tamiyo_pb2 import Capabilities
from esper.runtime.config import ConfigError
from esper.tamiyo.heuristic_file import load_heuristic_config
from esper.tamiyo.kernel_supply import KernelSupply, suitable, targets_for, wanted_pairs

K = common_pb2


def graph(*shapes: common_pb2.SlotShape) -> ModelGraph:
    return ModelGraph(slots=[SlotInfo(slot_id=f"s{i}", node_id=f"n{i}", shape=s) for i, s in enumerate(shapes)])


FEAT32 = K.SlotShape(kind=K.SLOT_KIND_FEATURES, channels=32)
CONV8 = K.SlotShape(kind=K.SLOT_KIND_CONV2D, channels=8, height=8, width=8)


def spec(name: str):
    return next(s for s in builtin_blueprints() if s.name == name)


def test_targets_are_distinct_shapes_on_the_session_device_and_dtype():
    caps = Capabilities(device="cpu", dtype=K.DTYPE_BFLOAT16)
    targets = targets_for(graph(FEAT32, FEAT32, CONV8), caps)
    assert [t.shape for t in targets] == [FEAT32, CONV8]
    assert {(t.device, t.dtype) for t in targets} == {("cpu", K.DTYPE_BFLOAT16)}


def test_unspecified_device_and_dtype_mean_cpu_float32():
    (target,) = targets_for(graph(FEAT32), Capabilities())
    assert (target.device, target.dtype) == ("cpu", K.DTYPE_FLOAT32)


def test_suitable_needs_kind_capability_and_growth():
    assert suitable(spec("BP-LORA-R8"), FEAT32, set())
    assert not suitable(spec("BP-LORA-R8"), CONV8, {"conv2d"})  # LoRA has no conv2d kind
    assert not suitable(spec("BP-CONV-SE"), CONV8, set())  # requires the conv2d capability
    assert suitable(spec("BP-CONV-SE"), CONV8, {"conv2d"})
    assert not suitable(spec("BP-DIAG-ACTSTATS"), FEAT32, set())  # diagnostic: no growth


def test_wanted_pairs_cover_every_shape_lowest_risk_first():
    pairs = wanted_pairs(graph(FEAT32, CONV8), Capabilities(tags=["conv2d"]))
    refs = [p.blueprint_ref for p in pairs]
    risks = {s.name: s.metadata.risk_score for s in builtin_blueprints()}
    ordered = [risks[r.split("@")[0]] for r in refs]
    assert ordered == sorted(ordered)
    assert {p.target_proto().shape.kind for p in pairs} == {K.SLOT_KIND_FEATURES, K.SLOT_KIND_CONV2D}
    assert "BP-CONV-SE@1.0.0" in refs and "BP-DIAG-ACTSTATS@1.0.0" not in refs
    assert len(set(pairs)) == len(pairs)


def test_without_tezzeret_the_supply_is_off_and_says_so():
    supply = KernelSupply("", "127.0.0.1:1", 1.0)
    supply.ensure(graph(FEAT32), Capabilities())  # no task, no error
    assert not supply.enabled
    assert "tezzeret_address is empty" in supply.reason()


def test_heuristic_file_overrides_defaults(tmp_path):
    path = tmp_path / "h.toml"
    path.write_text("plateau_patience = 1\ntraining_steps = 30\nregression_tolerance = 0.5\n"
                    "stream_pace_from_start = false\n")
    cfg = load_heuristic_config(str(path))
    assert (cfg.plateau_patience, cfg.training_steps, cfg.regression_tolerance) == (1, 30, 0.5)
    assert cfg.stream_pace_from_start is False
    assert cfg.blend_steps == 100  # untouched default


@pytest.mark.parametrize(("text", "named"), [
    ("plateau_patiense = 1\n", "plateau_patiense"),
    ("training_steps = 1.5\n", "training_steps"),
    ("regression_tolerance = \"x\"\n", "regression_tolerance"),
    ("blend_steps = -3\n", "blend_steps"),
    ("stream_pace_from_start = 1\n", "stream_pace_from_start: expected true or false"),
    ("plateau_patience = true\n", "plateau_patience: expected a number"),
    ("not toml", "not valid TOML"),
])
def test_heuristic_file_errors_name_the_key(tmp_path, text, named):
    path = tmp_path / "h.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_heuristic_config(str(path))


def test_missing_heuristic_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="heuristic_config"):
        load_heuristic_config(str(tmp_path / "nope.toml"))


def test_tamiyo_config_refuses_a_bad_heuristic_file(tmp_path):
    from esper.tamiyo.config import TamiyoConfig

    path = tmp_path / "h.toml"
    path.write_text("training_stepz = 3\n")
    with pytest.raises(ConfigError, match="heuristic_config.*training_stepz"):
        TamiyoConfig(port=0, heuristic_config=str(path)).validate()
