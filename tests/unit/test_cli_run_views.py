"""`esper runs` views: each seed's life from Nissa's transitions, two runs compared."""

from __future__ import annotations

from esper.cli.run_views import compare_runs, measured, seed_lives
from esper.leyline.v1 import lifecycle_pb2, nissa_pb2, telemetry_pb2

S = lifecycle_pb2.SeedStage


def _t(seed: str, slot: str, to: int, step: int, reason: str = "", bp: str = "") -> telemetry_pb2.SeedTransition:
    return telemetry_pb2.SeedTransition(seed_id=seed, slot_id=slot, to_stage=to, step=step,
                                        reason=reason, blueprint_ref=bp, seed_params=10 if bp else 0)


def test_seed_lives_group_stages_fate_and_reason() -> None:
    timeline = [
        _t("s1", "fc1", S.SEED_STAGE_GERMINATED, 100, "plateau", "BP-MLP-GELU@1.0.0"),
        _t("s1", "fc1", S.SEED_STAGE_TRAINING, 101),
        _t("s2", "conv2", S.SEED_STAGE_GERMINATED, 150, bp="BP-CONV@1.0.0"),
        _t("s1", "fc1", S.SEED_STAGE_CULLED, 140, "REGRESSION: loss +9%"),
        _t("s1", "fc1", S.SEED_STAGE_EMBARGOED, 141),
        _t("s2", "conv2", S.SEED_STAGE_TRAINING, 151),
    ]
    first, second = seed_lives(timeline)
    assert (first.seed_id, first.slot_id, first.blueprint_ref) == ("s1", "fc1", "BP-MLP-GELU@1.0.0")
    assert first.stages == [("GERMINATED", 100), ("TRAINING", 101), ("CULLED", 140),
                            ("EMBARGOED", 141)]
    assert (first.fate, first.reason) == ("culled", "REGRESSION: loss +9%")
    assert second.fate == "live (TRAINING)" and second.reason == ""
    text = str(first)
    assert "s1 in fc1: BP-MLP-GELU@1.0.0, 10 params" in text
    assert "GERMINATED@100 -> TRAINING@101 -> CULLED@140" in text
    assert "fate: culled (REGRESSION: loss +9%)" in text
    assert seed_lives([]) == []


def _summary(run: str, accs: list[float], params: int) -> nissa_pb2.GetRunSummaryResponse:
    s = nissa_pb2.GetRunSummaryResponse(run=nissa_pb2.RunInfo(run_id=run))
    for i, acc in enumerate(accs, start=1):
        s.epochs.add(epoch=i, step=10 * i, val_accuracy=acc, val_loss=1 - acc, total_params=params)
    return s


def test_compare_runs_lines_up_epochs_and_says_the_difference() -> None:
    text = compare_runs(_summary("grown", [0.5, 0.7, 0.8], 120), _summary("static", [0.5, 0.65], 100))
    lines = text.splitlines()
    assert lines[0] == "A = grown" and lines[1] == "B = static"
    row3 = next(line for line in lines if line.split()[:1] == ["3"])
    assert "80.00%" in row3 and row3.split()[2] == "-"
    assert "+5.00" in next(line for line in lines if line.split()[:1] == ["2"])
    assert "A 80.00% vs B 65.00% (+15.00 pp) with 120 vs 100 parameters" in lines[-1]
    assert compare_runs(_summary("a", [], 1), _summary("b", [], 1)).endswith("no epochs to compare yet")


def test_an_unmeasured_validation_number_prints_as_unknown():
    assert measured(0.75441) == "0.7544"
    assert measured(float("nan")) == "unknown" and measured(float("inf")) == "unknown"
