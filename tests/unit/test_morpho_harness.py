"""The morphogenesis harness's own parts (benchmarks/morpho): FLOP accounting, the paired
statistics, the sized hosts, Esper's final architecture, and the scheduled-growth policy
source driving real germinations through attach()."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from morpho import hosts, report  # noqa: E402
from morpho.flops import FlopMeter, count_every_pass  # noqa: E402
from morpho.growth import Planned, ScheduledGrowth  # noqa: E402

import esper.tolaria  # noqa: E402
from esper.leyline.v1.lifecycle_pb2 import SeedStage  # noqa: E402


def test_flop_meter_measures_once_per_key_and_charges_per_sample() -> None:
    lin = torch.nn.Linear(8, 4, bias=False)
    meter = FlopMeter()
    for n in (10, 10, 5):
        meter.run("train", "a", n, lambda n=n: lin(torch.randn(n, 8)))
    assert meter.measurements == 1
    assert meter.by_kind["train"] == 2 * 8 * 4 * 25  # 2 FLOPs per MAC, 25 samples
    with meter.counted("extra"):
        lin(torch.randn(3, 8))
    assert meter.by_kind["extra"] == 2 * 8 * 4 * 3
    assert meter.total == 2 * 8 * 4 * 28


@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_convolution_step_costs_three_forwards_whatever_its_groups(groups, stride) -> None:
    """Each gradient of a convolution is one pass over the forward's multiply-adds: a
    training step costs 3 forwards (2 where the input needs no gradient). torch's formula
    charges a grouped convolution's weight gradient as dense (a depthwise 3x3 over 16
    channels at 18 forwards): the harness's counter corrects it, dense counts unchanged."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=groups, stride=stride)
    x = torch.randn(4, 16, 10, 10)
    meter = FlopMeter()
    meter.run("validation", "fwd", 4, lambda: conv(x))
    meter.run("train", "first", 4, lambda: conv(x).sum().backward())
    meter.run("extra", "inner", 4, lambda: conv(x.requires_grad_()).sum().backward())
    forward = meter.by_kind["validation"]
    assert forward == 2 * 4 * 16 * (16 // groups) * 9 * (10 // stride) ** 2
    assert meter.by_kind["train"] == 2 * forward  # forward + weight gradient
    assert meter.by_kind["extra"] == 3 * forward  # + the input's gradient


def test_a_transformer_validation_pass_is_counted_whole() -> None:
    """An eval-mode, gradient-free pass of a TransformerEncoderLayer (a validation pass)
    costs what a training-mode forward does, once the harness has made every pass
    countable (its fused fast path is invisible to FlopCounterMode)."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    x = torch.randn(4, 8, 16)
    train = FlopMeter()
    train.run("train", "k", 4, lambda: layer(x))
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        count_every_pass()
        layer.eval()
        validation = FlopMeter()
        with torch.no_grad():
            validation.run("validation", "k", 4, lambda: layer(x))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    assert train.by_kind["train"] > 0
    assert validation.by_kind["validation"] == pytest.approx(train.by_kind["train"])


def test_paired_differences_are_esper_minus_arm_per_seed() -> None:
    esper = [{"seed": s, "test_accuracy": a, "flops": 1.0} for s, a in ((1, 0.90), (2, 0.80), (3, 0.85))]
    other = [{"seed": s, "test_accuracy": a, "flops": 2.0} for s, a in ((3, 0.86), (1, 0.89), (2, 0.79))]
    p = report.paired(esper, other)
    assert p["pairs"] == 3 and (p["esper_wins"], p["esper_losses"]) == (2, 1)
    assert math.isclose(p["esper_minus_arm_pp_mean"], (1 + 1 - 1) / 3)
    assert p["esper_flops_over_arm"] == 0.5


def test_sized_hosts_land_near_the_target_parameter_count() -> None:
    for host, target in (("mlp", 36_000), ("cnn", 3_400)):
        model = hosts.sized(host, target)
        assert abs(hosts.params(model) - target) / target < 0.05
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend
    yield
    torch.set_num_threads(threads)


def test_scheduled_growth_germinates_and_the_heuristic_finishes_the_seed(one_thread) -> None:
    torch.manual_seed(0)
    model = hosts.small("mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    source = ScheduledGrowth([Planned(step=5, slot_id="fc2", blueprint_ref="BP-MLP-GELU@1.0.0")])
    session = esper.tolaria.attach(model, optimizer, policy=source, example_input=torch.zeros(2, 1, 28, 28),
                                   config=esper.tolaria.TolariaConfig(progress=False, snapshot_every=5))
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    # validation losses whose gains fade by epoch 3: the local heuristic would grow on them
    slowing = [0.46, 0.40, 0.383, 0.379, 0.378]
    for step in range(250):  # the seed's whole life at the local defaults is ~150 steps
        optimizer.zero_grad()
        out = session.model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        session.step(loss, out, y)
        if step % 50 == 49:
            session.end_epoch({"val_loss": slowing[step // 50]})
    session.close()
    assert source.applied and source.applied[0]["slot"] == "fc2", source.dropped
    stages = {s.slot_id: s.stage for s in session.model.seed_states()}
    assert stages["fc2"] == SeedStage.SEED_STAGE_FOSSILIZED, stages
    assert stages["fc1"] == SeedStage.SEED_STAGE_DORMANT  # nothing unplanned
    assert "fc3" not in stages  # the logits layer is not a default slot


def _final_architecture(fossilized: list[dict]) -> torch.nn.Module:
    """esper_architecture() for an Esper run (MLP host, seed 7) that fossilized these."""
    from morpho.arms import Context, esper_architecture
    from morpho.data import Splits

    empty = torch.zeros(0)
    data = Splits(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), empty, empty,
                  empty, empty, batch_size=2)
    ctx = Context(host="mlp", seed=7, epochs=1, data=data)
    ctx.done["esper"] = {"fossilized": fossilized}
    return esper_architecture(ctx)


def test_esper_architecture_builds_unmerged_fossils_as_residual_modules() -> None:
    model = _final_architecture([
        {"slot": "fc1", "blueprint": "BP-MLP-GELU@1.0.0", "merged": False},
        {"slot": "fc2", "blueprint": "BP-LORA-R8@1.0.0", "merged": True}])
    torch.manual_seed(7)
    host = hosts.small("mlp")
    assert hosts.params(model) > hosts.params(host)
    assert type(model.fc2) is torch.nn.Linear and type(model.fc1).__name__ == "FossilLinear"
    x = torch.randn(3, 1, 28, 28)
    # a function-preserving seed starts at zero: the same function as the host it grew on
    torch.testing.assert_close(model(x), host(x))


def test_esper_architecture_widens_the_layers_a_width_fossil_widened() -> None:
    model = _final_architecture([
        {"slot": "fc1", "blueprint": "BP-WIDEN-HALF@1.0.0", "merged": False,
         "widen": {"producer": "fc1", "consumer": "fc2", "units": 16}},
        {"slot": "fc2", "blueprint": "BP-MLP-GELU@1.0.0", "merged": False}])
    assert model.fc1.out_features == 48 and type(model.fc2).__name__ == "FossilLinear"
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    # the plain wider MLP plus a residual block on fc2: what Esper's unwrap() would give
    assert hosts.params(model) == hosts.mlp_params(48, 32) + 8 * 32 * 32 + 5 * 32


def test_esper_architecture_nests_stacked_fossils_on_their_layer() -> None:
    model = _final_architecture([
        {"slot": "fc1", "node": "fc1", "blueprint": "BP-MLP-GELU@1.0.0", "merged": False},
        {"slot": "fc1@2", "node": "fc1", "blueprint": "BP-MLP-GELU@1.0.0", "merged": False}])
    assert type(model.fc1).__name__ == "FossilFossilLinear"  # the second fossil wraps the first
    one_block = 8 * 32 * 32 + 5 * 32  # the residual block each BP-MLP-GELU fossil adds here
    assert hosts.params(model) == hosts.mlp_params(32, 32) + 2 * one_block
    x = torch.randn(3, 1, 28, 28)
    torch.manual_seed(7)
    torch.testing.assert_close(model(x), hosts.small("mlp")(x))  # both blocks start at zero


def test_merge_adds_a_host_measured_in_a_run_of_its_own() -> None:
    from morpho.cli import merge

    def result(host: str, command: str) -> dict:
        run = {"seed": 1, "test_accuracy": 0.8, "flops": {"total": 1.0}, "params": 10,
               "wall_s": 1.0, "curve": []}
        return {"config": {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3,
                           "hosts": [host], "command": command},
                "hosts": {host: {"runs": {"static-small": [run], "esper": [run]},
                                 "unavailable": {}, "summary": {}}}}

    mlp, cnn = result("mlp", "a"), result("cnn", "b")
    assert merge(mlp, cnn) is None
    assert mlp["config"]["hosts"] == ["mlp", "cnn"] and set(mlp["hosts"]) == {"mlp", "cnn"}
    assert mlp["hosts"]["cnn"]["summary"]["arms"]["esper"]["seeds"] == 1
    other = result("char", "c")
    other["config"]["epochs"] = 12
    assert "epochs differs" in merge(mlp, other)
    char = result("char", "d")
    assert merge(char, mlp) is None  # a merged result keeps every command behind its runs
    assert char["config"]["merged"] == ["a", "b"]


def test_a_result_says_which_machines_its_runs_ran_on() -> None:
    """A seed's run repeats to the bit on one machine only: a result names the machine of
    every run in it, merged or taken with --esper-from, and says when there are several."""
    from morpho.cli import merge, this_machine
    from morpho.report import machines, markdown, summarise

    def result(machine: str | None) -> dict:
        run = {"seed": 1, "test_accuracy": 0.8, "flops": {"total": 1.0}, "params": 10,
               "wall_s": 1.0, "curve": []}
        cfg = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3, "hosts": ["mlp"],
               "command": "c", "seeds": 1, "arms": ["esper"]}
        if machine:
            cfg["machine"] = machine
        runs = {"esper": [run]}
        return {"config": cfg, "hosts": {"mlp": {"runs": runs, "unavailable": {},
                                                 "summary": summarise(runs)}}}

    here = this_machine()
    assert "torch CPU capability" in here
    one = result(here)
    assert "Machine: " + here in markdown(one) and "Machines:" not in markdown(one)
    assert merge(one, result(here)) is None and machines(one["config"]) == [here]
    assert merge(one, result(None)) is None  # a result from before machines were recorded
    assert machines(one["config"]) == sorted([here, "not recorded"])
    assert "Machines: " in markdown(one) and "not across machines" in markdown(one)


def test_merge_joins_seeds_run_in_other_processes_seed_by_seed() -> None:
    from morpho.cli import merge

    def result(seeds: list[int], accuracy: float) -> dict:
        runs = [{"seed": s, "test_accuracy": accuracy, "flops": {"total": 1.0}, "params": 10,
                 "wall_s": 1.0, "curve": []} for s in seeds]
        return {"config": {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3,
                           "hosts": ["cnn"], "command": str(seeds), "seeds": len(seeds)},
                "hosts": {"cnn": {"runs": {"esper": runs}, "unavailable": {}, "summary": {}}}}

    first = result([0], 0.8)
    assert merge(first, result([3, 1], 0.7)) is None
    assert merge(first, result([1], 0.9)) is None  # a seed run again replaces that seed's run
    runs = first["hosts"]["cnn"]["runs"]["esper"]
    assert [(r["seed"], r["test_accuracy"]) for r in runs] == [(0, 0.8), (1, 0.9), (3, 0.7)]
    assert first["config"]["seeds"] == first["config"]["seeds_done"] == 3
    assert first["hosts"]["cnn"]["summary"]["arms"]["esper"]["seeds"] == 3

def test_runs_that_follow_the_heuristics_defaults_join_only_a_result_of_the_same_defaults() -> None:
    """An opt-in that became the default: its Esper runs join a result of the new defaults,
    but the learned policy's (its fallback is the defaults) and the schedules' runs of that
    result do not: they ran under the old defaults."""
    import dataclasses

    from morpho.cli import merge

    from esper.tolaria import LOCAL_HEURISTIC

    def result(arms: list[str], **cfg) -> dict:
        run = {"seed": 1, "test_accuracy": 0.8, "flops": {"total": 1.0}, "params": 10,
               "wall_s": 1.0, "curve": []}
        return {"config": {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3,
                           "hosts": ["cnn"], "command": "c", **cfg},
                "hosts": {"cnn": {"runs": {arm: [run] for arm in arms}, "unavailable": {},
                                  "summary": {}}}}

    today = {"heuristic": {}, "heuristic_defaults": dataclasses.asdict(LOCAL_HEURISTIC)}
    # before the defaults were recorded (and compute was priced by option only)
    opted_in = {"heuristic": {"seed_first_epoch_pace": True}, "flops_weight": 0.5}
    assert merge(result(["static-small"], **today), result(["esper", "esper-arch-static"], **opted_in)) is None
    for arm in ("learned", "random", "schedule-every-1", "esper-plateau-only"):
        problem = merge(result(["static-small"], **today), result(["esper", arm], **opted_in))
        assert problem == ("config heuristic differs: flops_weight 0.5 vs 0.0, seed_first_epoch_pace "
                           f"true vs false in the local heuristic's defaults, which its {arm} runs "
                           "follow"), problem
    # The stream's defaults decide nothing on a host without a residual stream.
    earlier = {"heuristic": {}, "heuristic_defaults": {
        **dataclasses.asdict(LOCAL_HEURISTIC), "stream_growth_fraction": 0.25}}
    assert merge(result(["esper", "schedule-every-1"], **earlier), result(["learned"], **today)) is None
    on_char = result(["esper", "schedule-every-1"], **earlier)
    on_char["config"]["hosts"] = ["char"]
    on_char["hosts"] = {"char": on_char["hosts"].pop("cnn")}
    learned = result(["learned"], **today)
    learned["config"]["hosts"] = ["char"]
    learned["hosts"] = {"char": learned["hosts"].pop("cnn")}
    assert "stream_growth_fraction 0.25 vs 0.125" in merge(on_char, learned)



def test_esper_from_takes_each_seeds_run_of_an_earlier_result(tmp_path) -> None:
    from morpho.cli import _earlier_esper

    cfg = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3, "command": "earlier"}
    run = {"seed": 4, "test_accuracy": 0.8, "params": 10}
    (tmp_path / "a.json").write_text(json.dumps(
        {"config": cfg, "hosts": {"cnn": {"runs": {"esper": [run]}}}}))
    result = {"config": {**cfg, "command": "now"}}
    assert _earlier_esper(tmp_path / "a.json", result) == {("cnn", 4): run}
    assert result["config"]["esper_from"] == "earlier"
    result["config"]["epochs"] = 30
    assert "epochs differs" in _earlier_esper(tmp_path / "a.json", result)


def test_esper_listed_with_esper_from_is_taken_not_run_again(tmp_path, monkeypatch) -> None:
    import morpho.arms
    from morpho.cli import main

    assert main(["--quick", "--hosts", "mlp", "--arms", "esper", "--out-dir", str(tmp_path),
                 "--name", "first"]) == 0
    first = json.loads((tmp_path / "first.json").read_text())["hosts"]["mlp"]["runs"]["esper"]

    def not_again(ctx):
        raise AssertionError("esper was run again")
    monkeypatch.setitem(morpho.arms.RUNNERS, "esper", not_again)
    assert main(["--quick", "--hosts", "mlp", "--arms", "esper,static-final-size",
                 "--esper-from", str(tmp_path / "first.json"), "--out-dir", str(tmp_path),
                 "--name", "again"]) == 0
    runs = json.loads((tmp_path / "again.json").read_text())["hosts"]["mlp"]["runs"]
    assert runs["esper"] == first and runs["static-final-size"]


def test_cosine_schedule_decays_to_zero_over_the_run_and_restarts_nowhere() -> None:
    from morpho.loop import cosine_factor

    values = [cosine_factor(s, 100) for s in range(101)]
    assert values[0] == 1.0 and values[100] == 0.0 and math.isclose(values[50], 0.5)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert cosine_factor(150, 100) == 0.0  # past the end: stays at zero


def _splits(n: int = 96, batch: int = 32):
    from morpho.data import Splits

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Splits(x_train=x, y_train=y, x_val=x[:32], y_val=y[:32], x_test=x[:32], y_test=y[:32],
                  batch_size=batch)


def test_a_run_fitted_to_fewer_steps_stops_there_and_anneals_to_zero(one_thread) -> None:
    from morpho.loop import train

    data = _splits()  # 3 steps per epoch
    torch.manual_seed(0)
    net = hosts.small("mlp")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    record = train(net, optimizer, data, seed=1, epochs=4, meter=FlopMeter(),
                   lr_schedule="cosine", max_steps=7)
    assert len(record["curve"]) == 3  # epochs 1, 2 and the partial third, each validated
    other = hosts.small("mlp")
    full = train(other, torch.optim.Adam(other.parameters(), lr=1e-3), data, seed=1, epochs=4,
                 meter=FlopMeter())
    assert math.isclose(record["flops"]["train"] / 7, full["flops"]["train"] / 12)  # 7 of 12 steps
    assert math.isclose(record["flops"]["validation"] / 3, full["flops"]["validation"] / 4)
    assert optimizer.param_groups[0]["lr"] == 0.0  # the schedule ended with the run
    with pytest.raises(ValueError, match="lr_schedule"):
        train(net, optimizer, data, seed=1, epochs=1, meter=FlopMeter(), lr_schedule="linear")


def test_fitted_steps_spend_at_most_the_budget_with_validation_counted() -> None:
    from morpho.arms import fitted_steps

    record = {"flops": {"total": 1000.0 + 40.0, "train": 1000.0, "validation": 40.0}}
    # 10 epochs x 10 steps: 10 FLOPs a step, 4 a validation pass
    assert fitted_steps(record, 2000.0, 10, 10) is None  # the full run fits
    steps = fitted_steps(record, 600.0, 10, 10)
    assert steps * 10 + math.ceil(steps / 10) * 4 <= 600.0
    assert (steps + 1) * 10 + math.ceil((steps + 1) / 10) * 4 > 600.0


def test_results_of_different_learning_rate_schedules_do_not_mix() -> None:
    from morpho.cli import config_mismatch

    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3}
    assert config_mismatch(base, {**base, "lr_schedule": "constant"}) is None  # older results
    assert "lr_schedule differs" in config_mismatch(base, {**base, "lr_schedule": "cosine"})


def test_results_of_esper_under_other_settings_do_not_mix() -> None:
    """An Esper run with other settings is another Esper: merged, or taken by --esper-from,
    its table would be labelled with the wrong settings."""
    from morpho.cli import config_mismatch

    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3}
    paced = {**base, "heuristic": {"seed_first_epoch_pace": True}}
    assert "heuristic differs" in config_mismatch(base, paced)
    assert config_mismatch(paced, {**paced}) is None
    assert config_mismatch(base, {**base, "heuristic": {}}) is None  # none set, old or new
    assert config_mismatch({**base, "heuristic": None}, {**base, "heuristic": {}}) is None
    assert "slot_depth differs" in config_mismatch(base, {**base, "slot_depth": 3})
    assert config_mismatch(base, {**base, "slot_depth": 1, "width_growth": False}) is None
    assert "flops_weight 0.0 vs 0.5" in config_mismatch(base, {**base, "flops_weight": 0.5})


def test_results_compare_the_heuristic_they_ran_with_not_the_changes_they_asked_for() -> None:
    """A result records the local heuristic's defaults: once a default changes, a result of
    the old defaults does not mix with one of the new, and an opt-in that became the
    default mixes with the defaults. Results from before the defaults were recorded ran
    with the seeds' first-epoch signal off."""
    import dataclasses

    from morpho.cli import config_mismatch, esper_heuristic

    from esper.tolaria import LOCAL_HEURISTIC

    # (an image host: the stream's settings, one of them added since, decide nothing there)
    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3, "hosts": ["mlp"]}
    today = {**base, "heuristic": {}, "heuristic_defaults": dataclasses.asdict(LOCAL_HEURISTIC)}
    assert esper_heuristic(today) == dataclasses.asdict(LOCAL_HEURISTIC)
    assert esper_heuristic(base)["seed_first_epoch_pace"] is False  # before it was recorded
    # then the opt-ins (compute was priced by option, before it was by default)
    opted_in = {**base, "heuristic": {"seed_first_epoch_pace": True}, "flops_weight": 0.5}
    assert config_mismatch(today, opted_in) is None
    problem = config_mismatch(today, {**base, "flops_weight": 0.5})
    assert problem == "config heuristic differs: seed_first_epoch_pace true vs false"
    older = {**today, "heuristic_defaults": {**today["heuristic_defaults"], "slowdown_ratio": 0.25}}
    assert "slowdown_ratio 0.5 vs 0.25" in config_mismatch(today, older)
    # A field added since a result was written counts at today's default.
    fewer = {**today, "heuristic_defaults": {k: v for k, v in today["heuristic_defaults"].items()
                                             if k != "eager_after_epochs"}}
    assert config_mismatch(today, fewer) is None


def test_a_heuristic_field_set_by_option_is_one_esper_with_that_field_by_default() -> None:
    """--flops-weight 0.5 under unpriced defaults ran the Esper that today's priced
    defaults run: the two join; the unpriced defaults' runs do not join today's."""
    import dataclasses

    from morpho.cli import config_mismatch, esper_heuristic

    from esper.tolaria import LOCAL_HEURISTIC

    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3, "hosts": ["cnn"],
            "heuristic": {}}
    today = {**base, "heuristic_defaults": dataclasses.asdict(LOCAL_HEURISTIC)}
    unpriced = {**base, "heuristic_defaults": {**today["heuristic_defaults"], "flops_weight": 0.0}}
    assert esper_heuristic(today)["flops_weight"] == 0.5
    assert config_mismatch(today, {**unpriced, "flops_weight": 0.5}) is None
    assert config_mismatch(today, unpriced) == "config heuristic differs: flops_weight 0.5 vs 0.0"
    assert "flops_weight 0.5 vs 0.25" in config_mismatch(today, {**today, "flops_weight": 0.25})
    assert config_mismatch(unpriced, {**unpriced, "heuristic": {"flops_weight": 0.0}}) is None


def test_stream_settings_separate_results_only_where_a_host_has_a_stream() -> None:
    """The stream_* settings act only on a host with a residual stream (char): image hosts'
    Esper runs under other stream settings are the same runs and join; a char run's are not."""
    import dataclasses

    from morpho.cli import config_mismatch

    from esper.tolaria import LOCAL_HEURISTIC

    defaults = dataclasses.asdict(LOCAL_HEURISTIC)
    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3, "heuristic": {}}
    today = {**base, "heuristic_defaults": defaults}
    wider = {**base, "heuristic_defaults": {**defaults, "stream_growth_fraction": 0.25}}
    assert config_mismatch({**today, "hosts": ["mlp"]}, {**wider, "hosts": ["mlp", "cnn"]}) is None
    assert "stream_growth_fraction" in config_mismatch({**today, "hosts": ["char"]}, {**wider, "hosts": ["char"]})
    assert "stream_growth_fraction" in config_mismatch({**today, "hosts": ["mlp"]}, {**wider, "hosts": ["char"]})
    assert "stream_growth_fraction" in config_mismatch(today, {**wider, "hosts": ["mlp"]})  # hosts unknown
    slower = {**base, "hosts": ["mlp"], "heuristic_defaults": {**defaults, "slowdown_ratio": 0.25}}
    assert "slowdown_ratio" in config_mismatch({**today, "hosts": ["mlp"]}, slower)


def test_results_from_before_the_stream_left_the_seeds_their_room_join_only_without_a_stream() -> None:
    """Since the stream widens beside the seeds' room (esper.tolaria.budget), a char run
    grows other seeds than one from before (which recorded no stream_room): they are not
    one experiment; image hosts' runs are the same under either and join."""
    from morpho.cli import STREAM_ROOM, config_mismatch

    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3}
    today = {**base, "stream_room": STREAM_ROOM}
    assert "config stream_room differs: beside vs inside" in config_mismatch(
        {**today, "hosts": ["char"]}, {**base, "hosts": ["char"]})
    assert "stream_room" in config_mismatch({**today, "hosts": ["mlp"]}, {**base, "hosts": ["char"]})
    assert config_mismatch({**today, "hosts": ["mlp"]}, {**base, "hosts": ["mlp", "cnn"]}) is None
    assert config_mismatch({**today, "hosts": ["char"]}, {**today, "hosts": ["char"]}) is None


def test_a_result_from_before_a_heuristic_field_counts_at_what_its_runs_did() -> None:
    """stream_hold_at_limit came after results recorded the defaults: one recorded without
    it held seeds after the stream's last widening (True); today's local default is False."""
    import dataclasses

    from morpho.cli import heuristic_defaults

    from esper.tolaria import LOCAL_HEURISTIC

    before = {k: v for k, v in dataclasses.asdict(LOCAL_HEURISTIC).items() if k != "stream_hold_at_limit"}
    assert heuristic_defaults({"heuristic_defaults": before})["stream_hold_at_limit"] is True
    assert heuristic_defaults({})["stream_hold_at_limit"] is True
    today = {"heuristic_defaults": dataclasses.asdict(LOCAL_HEURISTIC)}
    assert heuristic_defaults(today)["stream_hold_at_limit"] is False


def test_growth_headroom_compares_the_small_host_to_the_final_architecture_at_equal_flops() -> None:
    def run(seed: int, points: list[tuple[float, float]]) -> dict:
        return {"seed": seed, "curve": [{"flops": f, "test_accuracy": a} for f, a in points]}

    # per epoch the small host spends 1 FLOP, the final architecture 2
    small = [run(1, [(1, 0.50), (2, 0.70), (3, 0.72)])]
    final = [run(1, [(2, 0.60), (4, 0.74), (6, 0.80)])]
    room = report.growth_headroom({"static-small": small, "esper-arch-static": final})
    # at 1 FLOP the final architecture is at its first point (clamped), at 2 it is 0.60, at
    # 3 halfway to 0.74
    assert [round(a, 6) for a in room["small_minus_final_pp"]] == [-10.0, 10.0, 5.0]
    assert math.isclose(room["max_pp"], 10.0) and (room["at_epoch"], room["epochs_ahead"]) == (2, 2)
    assert "at most +10.00 pp" in report._headroom_line(room)
    behind = report.growth_headroom({"static-small": small, "esper-arch-static": [
        run(1, [(1, 0.9), (2, 0.9), (3, 0.9)])]})
    assert behind["epochs_ahead"] == 0 and "never ahead" in report._headroom_line(behind)
    assert report.growth_headroom({"static-small": small}) is None


def test_at_a_constant_rate_a_flop_milestone_is_read_where_the_run_crosses_it(one_thread) -> None:
    from morpho.loop import train

    data = _splits()  # 3 steps per epoch
    torch.manual_seed(0)
    net = hosts.small("mlp")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    probe = train(hosts.small("mlp"), torch.optim.Adam(net.parameters(), lr=1e-3), data, seed=1,
                  epochs=1, meter=FlopMeter())
    per_step = probe["flops"]["train"] / 3
    record = train(net, optimizer, data, seed=1, epochs=3, meter=FlopMeter(),
                   milestones={"half": 4.5 * per_step, "never": 1e30})
    half, never = record["milestones"]["half"], record["milestones"]["never"]
    assert half["reached"] and half["flops"] >= 4.5 * per_step and 1 < half["epoch"] < 2
    assert not never["reached"] and never["flops"] == record["flops"]["total"]
    assert optimizer.param_groups[0]["lr"] == 1e-3  # no schedule


def test_flops_weight_is_checked_and_recorded() -> None:
    from morpho.cli import parser

    assert parser().parse_args(["--flops-weight", "0.5"]).flops_weight == 0.5
    assert parser().parse_args([]).flops_weight is None  # the local heuristic's default
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--flops-weight", bad])


def test_the_fixed_schedule_is_searched_over_its_spacings() -> None:
    from morpho.arms import SCHEDULE_SPACINGS, Context, runs_for, schedule_epochs, spacing_of
    from morpho.cli import parser

    assert schedule_epochs(20, 3) == [2, 4, 6] and schedule_epochs(5, 2) == [1, 2]
    assert schedule_epochs(20, 3, every=3) == [3, 6, 9]
    assert parser().parse_args(["--schedule-every", "1"]).schedule_every == (1,)
    assert parser().parse_args(["--schedule-every", "3, 1,3"]).schedule_every == (1, 3)
    assert parser().parse_args([]).schedule_every is None  # main: SCHEDULE_SPACINGS (--quick: 1)
    for bad in ("0", "-2", "1.5", "x", "1,,0", ","):
        with pytest.raises(SystemExit):
            parser().parse_args(["--schedule-every", bad])
    ctx = Context(host="mlp", seed=1, epochs=20, data=None)
    assert [arm for arm, _ in runs_for("schedule", ctx)] == \
        [f"schedule-every-{k}" for k in SCHEDULE_SPACINGS]
    assert [arm for arm, _ in runs_for("random", ctx)] == ["random"]
    assert [spacing_of(a) for a in ("schedule-every-2", "schedule", "schedule-every-x", "esper")] == \
        [2, None, None, None]


def _row(seed: int, test: float, val: float, flops: float = 1e9) -> dict:
    return {"seed": seed, "test_accuracy": test, "val_accuracy": val, "flops": {"total": flops},
            "params": 10, "wall_s": 1.0, "curve": []}


def test_the_best_fixed_schedule_is_chosen_on_validation_never_on_test() -> None:
    runs = {"esper": [_row(s, 0.80, 0.80) for s in (1, 2)],
            # every 1 epoch: the better test accuracy, the worse validation accuracy
            "schedule-every-1": [_row(s, 0.85, 0.70) for s in (1, 2)],
            "schedule-every-2": [_row(1, 0.78, 0.75), _row(2, 0.79, 0.76)]}
    summary = report.summarise(runs)
    assert summary["best_schedule"]["arm"] == "schedule-every-2"
    assert summary["best_schedule"]["val_accuracy_mean"]["schedule-every-1"] == pytest.approx(0.70)
    pair = summary["paired_vs_esper"]["schedule"]
    assert pair["esper_wins"] == 2 and pair["esper_minus_arm_pp_mean"] == pytest.approx(1.5)
    measured = dict((label, ok) for label, _, ok in report.targets(summary))
    assert measured["Esper > the best fixed schedule (every 2 epoch(s), chosen on validation accuracy)"]
    # the table shows each spacing, the chosen one marked, not the alias
    assert report.table_arms(summary, {}) == ["esper", "schedule-every-1", "schedule-every-2"]
    md = report.markdown({"config": {"command": "x", "seeds": 2, "epochs": 20, "hosts": ["mlp"]},
                          "hosts": {"mlp": {"runs": runs, "unavailable": {}, "summary": summary}}})
    assert "every 2 epoch(s)), the best on validation |" in md
    assert "every 1 epoch(s)) |" in md
    # a result from before the search: its one schedule arm is the comparison
    old = report.summarise({"esper": runs["esper"], "schedule": runs["schedule-every-1"]})
    assert old["best_schedule"] is None and old["paired_vs_esper"]["schedule"]["esper_losses"] == 2


def test_training_flops_budget_is_checked_and_reaches_the_esper_arms() -> None:
    from morpho.arms import Context, _esper_budget
    from morpho.cli import parser

    args = parser().parse_args(["--training-flops-budget", "755"])
    assert args.training_flops_budget == 755.0
    assert parser().parse_args([]).training_flops_budget is None
    for bad in ("0", "-1", "nan", "inf", "abc"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--training-flops-budget", bad])

    class Data:
        steps_per_epoch = 391

    ctx = Context(host="cnn", seed=0, epochs=20, data=Data(), training_flops_budget=755.0)
    budget = _esper_budget(ctx)
    assert budget.max_training_flops == 755e9 and budget.planned_steps == 20 * 391
    assert _esper_budget(Context(host="cnn", seed=0, epochs=20, data=Data())) is None


def test_slot_depth_is_checked_and_reaches_every_grown_arm(one_thread) -> None:
    from morpho.arms import Context, _grown
    from morpho.cli import parser
    from morpho.data import Splits

    assert parser().parse_args(["--slot-depth", "3"]).slot_depth == 3
    assert parser().parse_args([]).slot_depth == 1
    for bad in ("0", "9", "2.5", "x"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--slot-depth", bad])
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)

    data = Splits(*images(8), *images(4), *images(4), batch_size=4)
    for depth, stacked in ((1, set()), (2, {"fc1@2", "fc2@2"})):
        ctx = Context(host="mlp", seed=7, epochs=1, data=data, slot_depth=depth)
        _, morph = _grown(ctx, "local")
        assert {s for s in morph.slots if "@" in s} == stacked


def test_seed_init_is_checked_and_reaches_every_grown_arm(one_thread) -> None:
    from morpho.arms import Context, _grown
    from morpho.cli import parser
    from morpho.data import Splits

    assert parser().parse_args(["--seed-init", "bottleneck"]).seed_init == "bottleneck"
    assert parser().parse_args([]).seed_init == "default"
    with pytest.raises(SystemExit):
        parser().parse_args(["--seed-init", "zeros"])
    g = torch.Generator().manual_seed(0)
    data = Splits(torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g),
                  torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                  torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                  batch_size=4)
    for init in ("default", "bottleneck"):
        _, morph = _grown(Context(host="mlp", seed=7, epochs=1, data=data, seed_init=init), "local")
        assert morph.cfg.seed_init == init


def test_seed_param_fraction_is_checked_and_reaches_every_grown_arm(one_thread) -> None:
    """--seed-param-fraction F: Kasmina's room for growth (seed parameters up to F times the
    host's) in every grown arm and in the budget its policy is sent; Kasmina's own check."""
    from morpho.arms import Context, _grown
    from morpho.cli import config_mismatch, parser
    from morpho.data import Splits

    assert parser().parse_args(["--seed-param-fraction", "2"]).seed_param_fraction == 2.0
    assert parser().parse_args([]).seed_param_fraction == 1.0
    for bad in ("0", "-1", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--seed-param-fraction", bad])
    g = torch.Generator().manual_seed(0)
    data = Splits(torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g),
                  torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                  torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                  batch_size=4)
    for fraction in (1.0, 2.5):
        ctx = Context(host="mlp", seed=7, epochs=1, data=data, seed_param_fraction=fraction)
        _, morph = _grown(ctx, "local")
        assert morph.cfg.max_seed_param_fraction == fraction
    base = {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3}
    assert "seed_param_fraction differs" in config_mismatch(base, {**base, "seed_param_fraction": 2.0})
    assert config_mismatch(base, {**base, "seed_param_fraction": 1.0}) is None


def test_width_growth_is_checked_and_reaches_every_grown_arm(one_thread, monkeypatch) -> None:
    from morpho.arms import Context, _grown
    from morpho.cli import main, parser
    from morpho.data import Splits

    assert parser().parse_args(["--width-growth"]).width_growth
    assert not parser().parse_args([]).width_growth
    with pytest.raises(SystemExit) as refused:  # a stacked slot offers no widening
        main(["--width-growth", "--slot-depth", "2", "--quick"])
    assert refused.value.code == 2
    offered, attach = [], esper.tolaria.attach
    monkeypatch.setattr(esper.tolaria, "attach",
                        lambda *a, **kw: offered.append(kw["blueprints"]) or attach(*a, **kw))
    g = torch.Generator().manual_seed(0)
    data = Splits(torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g),
                  torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                  torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g),
                  batch_size=4)
    for width in (False, True):
        _grown(Context(host="mlp", seed=7, epochs=1, data=data, width_growth=width), "local")
    assert offered[0] is None  # the catalogue's defaults
    assert "BP-WIDEN-HALF@1.0.0" in offered[1] and "BP-MLP-GELU@1.0.0" in offered[1]
    assert report.label_of("esper", {"width_growth": True}) == \
        "Esper, heuristic, width growth opted in (BP-WIDEN-HALF)"


@pytest.mark.parametrize(("setting", "says"), [
    ("seed_pace_from_start", "want KEY=VALUE"),
    ("=true", "want KEY=VALUE"),
    ("seed_pace_from_starts=true", "unknown key 'seed_pace_from_starts'"),
    ("seed_pace_from_start=1", "seed_pace_from_start: expected true or false"),
    ("plateau_patience=2.5", "plateau_patience: expected an integer"),
    ("slowdown_ratio=-0.5", "slowdown_ratio: -0.5 must be a finite number >= 0"),
    ("slowdown_ratio=nan", "slowdown_ratio: nan must be a finite number"),
    ("slowdown_ratio=x", "VALUE must be a number or true/false"),
    ("a=1\nb=2", "want one KEY=VALUE"),
])
def test_heuristic_settings_are_checked_naming_the_field(capsys, setting, says) -> None:
    from morpho.cli import parser

    with pytest.raises(SystemExit):
        parser().parse_args(["--heuristic", setting])
    assert says in capsys.readouterr().err


def test_heuristic_settings_reach_the_esper_arms_policy(capsys) -> None:
    from morpho.arms import Context, _esper_policy
    from morpho.cli import main, parser

    args = parser().parse_args(["--heuristic", "seed_pace_from_start=true",
                                "--heuristic", "slowdown_ratio=0.4"])
    assert dict(args.heuristic) == {"seed_pace_from_start": True, "slowdown_ratio": 0.4}
    ctx = Context(host="mlp", seed=0, epochs=1, data=None, flops_weight=0.5, heuristic=dict(args.heuristic))
    config = _esper_policy(ctx).policy.config
    assert (config.seed_pace_from_start, config.slowdown_ratio, config.flops_weight) == (True, 0.4, 0.5)
    assert config.training_steps == esper.tolaria.LOCAL_HEURISTIC.training_steps  # the local defaults underneath
    assert _esper_policy(Context(host="mlp", seed=0, epochs=1, data=None)) == "local"
    with pytest.raises(SystemExit):  # one field set two ways
        main(["--heuristic", "flops_weight=0.5", "--flops-weight", "0.25", "--quick"])
    assert "give it once" in capsys.readouterr().err
    assert report.label_of("esper", {"heuristic": {"seed_pace_from_start": True}}) == \
        "Esper, heuristic, seed_pace_from_start=true"


def test_the_esper_row_says_what_it_ran_with() -> None:
    assert report.label_of("esper", {}) == "Esper, heuristic at defaults"
    assert report.label_of("esper", {"slot_depth": 1, "flops_weight": None}) == "Esper, heuristic at defaults"
    assert report.label_of("esper", {"slot_depth": 3}) == \
        "Esper, heuristic, seeds that stack (slot_depth 3)"
    assert report.label_of("esper", {"slot_depth": 3, "flops_weight": 0.5}) == \
        "Esper, heuristic, seeds that stack (slot_depth 3), compute priced (flops_weight 0.5)"
    assert report.label_of("esper", {"slot_depth": 1, "flops_weight": 0.0}) == \
        "Esper, heuristic, compute unpriced (flops_weight 0.0)"
    assert report.label_of("esper", {"seed_init": "bottleneck"}) == \
        "Esper, heuristic, seeds initialised from the bottleneck statistic"
    assert report.label_of("random", {"slot_depth": 3}) == report.LABELS["random"]
    # The stacked-seed arm runs the esper arm's policy: its row says so too, and only that.
    assert report.label_of("esper-stack", {"heuristic": {"seed_first_epoch_pace": True},
                                           "seed_init": "bottleneck"}) == \
        report.LABELS["esper-stack"] + ", seed_first_epoch_pace=true"
    assert report.label_of("esper-stack", {}) == report.LABELS["esper-stack"]
    assert report.label_of("esper-width", {"heuristic": {"x": 1}}) == report.LABELS["esper-width"]
    assert report.label_of("schedule", {}) == report.LABELS["schedule"]
    assert "every 3 epoch(s)" in report.label_of("schedule", {"schedule_every": 3})
    assert "every 2 epoch(s)" in report.label_of("schedule-every-2", {"schedule_every": [1, 2]})


def _char_session(plan: list, rng=None):
    import random

    from morpho.text import SEQ_LEN

    torch.manual_seed(0)
    model = hosts.small("char", vocab=20)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    source = ScheduledGrowth(plan, rng=rng or random.Random(0))
    x = torch.randint(0, 20, (8, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    session = esper.tolaria.attach(model, optimizer, policy=source, example_input=x[:2],
                                   config=esper.tolaria.TolariaConfig(progress=False, snapshot_every=5))
    for step in range(30):
        optimizer.zero_grad()
        out = session.model(x)
        loss = F.cross_entropy(out.flatten(0, 1), x.flatten())
        loss.backward()
        optimizer.step()
        session.step(loss, out, x)
    session.close()
    return session, source


def test_scheduled_growth_widens_the_stream_as_planned(one_thread) -> None:
    session, source = _char_session([Planned(step=5, features=8), Planned(step=15, features=8)])
    assert [a["slot"] for a in source.applied] == ["<stream>", "<stream>"], source.dropped
    assert [h["step"] for h in session.model.stream.history] == [5, 15]
    assert session.model.stream.width == 48
    assert session.model.slot("blocks.0").shape.channels == 48


def test_random_growth_may_draw_the_stream_and_then_fits_seeds_to_it(one_thread) -> None:
    import random

    class Stream(random.Random):  # draws the stream first, then the first slot
        drawn = False

        def choice(self, seq):
            if "<stream>" in seq and not self.drawn:
                self.drawn = True
                return "<stream>"
            return sorted(s for s in seq if s != "<stream>")[0]

    session, source = _char_session([Planned(step=5), Planned(step=10)], rng=Stream(0))
    assert source.applied[0]["slot"] == "<stream>" and session.model.stream.width == 36  # by an eighth
    assert source.applied[1]["slot"] == "blocks.0", source.dropped  # a seed at the new width


def test_esper_architecture_is_as_wide_as_the_stream_grew() -> None:
    from morpho.arms import Context, esper_architecture
    from morpho.data import Splits
    from morpho.text import SEQ_LEN

    empty = torch.zeros(0)
    data = Splits(torch.zeros(4, SEQ_LEN, dtype=torch.long), torch.zeros(4, SEQ_LEN, dtype=torch.long),
                  empty, empty, empty, empty, batch_size=2, vocab_size=20)
    ctx = Context(host="char", seed=7, epochs=1, data=data)
    ctx.done["esper"] = {"fossilized": [], "stream": {"declared": 32, "width": 48, "widenings": [
        {"step": 10, "epoch": 1, "from": 32, "to": 40, "params": 1}]}}
    model = esper_architecture(ctx)
    assert model.norm.normalized_shape == (48,)
    assert hosts.params(model) == hosts.params(hosts.small("char", 20, width=48))


def test_restarts_zero_the_moments_and_keep_the_step_count(one_thread) -> None:
    from morpho.loop import train

    data = _splits()  # 3 steps per epoch
    torch.manual_seed(0)
    net = hosts.small("mlp")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    seen = []
    original = optimizer.step

    def spy(*a, **k):  # the moments as each step starts
        state = optimizer.state.get(net.fc1.weight)
        seen.append(None if not state else (int(state["step"]), float(state["exp_avg"].abs().sum())))
        return original(*a, **k)

    optimizer.step = spy
    train(net, optimizer, data, seed=1, epochs=2, meter=FlopMeter(), restarts=(4,))
    assert seen[4][0] == 4 and seen[4][1] == 0.0  # restarted after step 4, count kept
    assert seen[3][1] > 0 and seen[5][1] > 0


def test_learning_rate_is_checked_and_results_at_another_rate_never_merge() -> None:
    from morpho.cli import config_mismatch, parser

    assert parser().parse_args(["--learning-rate", "3e-3"]).learning_rate == 3e-3
    for bad in ("0", "-1e-3", "nan", "2"):
        with pytest.raises(SystemExit):
            parser().parse_args(["--learning-rate", bad])
    base = {"epochs": 20, "quick": False, "data": {}, "seed_base": 1, "lr_schedule": "cosine"}
    assert config_mismatch(base, {**base, "learning_rate": 1e-3}) is None  # older results: 1e-3
    assert "learning_rate" in config_mismatch(base, {**base, "learning_rate": 3e-3})


def test_jobs_children_get_the_command_without_the_options_their_parent_splits() -> None:
    from morpho.cli import _without

    argv = ["--seeds", "5", "--hosts", "mlp", "--jobs=2", "--name", "x", "--first-seed=1", "--quick"]
    assert _without(argv, ("--jobs", "--seeds", "--first-seed", "--name")) == ["--hosts", "mlp", "--quick"]
    assert _without(["--seedsX", "1"], ("--seeds",)) == ["--seedsX", "1"]  # a prefix is another option


def test_schedules_run_before_the_search_merge_into_one_search_by_their_spacing() -> None:
    from morpho.cli import merge, spaced_schedule

    def result(every, val: float) -> dict:
        runs = {"esper": [_row(1, 0.80, 0.80)], "schedule": [_row(1, 0.81, val)]}
        return {"config": {"command": f"every {every}", "epochs": 20, "quick": False, "data": {},
                           "seed_base": 1, "schedule_every": every, "hosts": ["mlp"]},
                "hosts": {"mlp": {"runs": runs, "unavailable": {}, "summary": {}}}}

    base = spaced_schedule(result(None, 0.70))  # E/10: every 2 epochs
    assert set(base["hosts"]["mlp"]["runs"]) == {"esper", "schedule-every-2"}
    assert base["config"]["schedule_every"] == [2]
    assert merge(base, spaced_schedule(result(1, 0.75))) is None
    assert base["config"]["schedule_every"] == [1, 2]
    summary = base["hosts"]["mlp"]["summary"]
    assert summary["best_schedule"]["arm"] == "schedule-every-1"
    assert set(summary["arms"]) == {"esper", "schedule", "schedule-every-1", "schedule-every-2"}
    # a result of the search is left as it is
    searched = {"config": {"schedule_every": [1, 3]}, "hosts": {}}
    assert spaced_schedule(searched) is searched and searched["config"]["schedule_every"] == [1, 3]


def test_a_schedule_that_spends_more_than_esper_is_fitted_to_its_flops_by_its_own_curve() -> None:
    from morpho.arms import fitted_steps_grown

    # 10 steps an epoch; epochs cost 100, then 200 after growth (10% of it validation)
    curve = [{"flops": f} for f in (100.0, 300.0, 500.0, 700.0)]
    record = {"flops": {"total": 700.0, "validation": 70.0}, "curve": curve}
    assert fitted_steps_grown(record, 700.0, 10) is None  # it fits: its end is the point
    # 400 falls in epoch 3 (300 -> 500): its validation costs 20, a step 18, so (400-300-20)//18
    assert fitted_steps_grown(record, 400.0, 10) == 2 * 10 + 4
    assert fitted_steps_grown(record, 50.0, 10) == 4  # (50 - 10) // 9 in the first epoch
    assert fitted_steps_grown(record, 5.0, 10) == 1  # at least one step
    # 301 is past epoch 2's end, but no step of epoch 3 fits with its validation pass
    assert fitted_steps_grown(record, 301.0, 10) == 2 * 10
    steps = fitted_steps_grown(record, 699.0, 10)
    assert 30 < steps < 40


def test_the_best_schedule_is_also_compared_at_esper_flops_when_it_spent_more() -> None:
    def fitted(row: dict, test: float, flops: float) -> dict:
        row["milestones"] = {"esper-flops": {"test_accuracy": test, "flops": flops, "fitted_run": True}}
        return row

    runs = {"esper": [_row(s, 0.80, 0.80, flops=100.0) for s in (1, 2)],
            "schedule-every-1": [fitted(_row(s, 0.81, 0.75, flops=110.0), 0.79, 99.0) for s in (1, 2)],
            "schedule-every-2": [_row(s, 0.80, 0.70, flops=95.0) for s in (1, 2)]}
    summary = report.summarise(runs)
    assert summary["best_schedule"]["arm"] == "schedule-every-1" and summary["best_schedule"]["fitted"]
    assert summary["paired_vs_esper"]["schedule"]["esper_losses"] == 2
    assert summary["paired_vs_esper"]["schedule@esper-flops"]["esper_wins"] == 2
    measured = {label: (text, ok) for label, text, ok in report.targets(summary)}
    label = "Esper > the best fixed schedule (every 1 epoch(s), chosen on validation accuracy)"
    assert measured[label][1] is False
    assert measured["  the best fixed schedule (every 1 epoch(s), chosen on validation accuracy), "
                    "at matched FLOPs"][1] is True
    assert report.table_arms(summary, {}) == ["esper", "schedule-every-1", "schedule-every-1@esper-flops",
                                              "schedule-every-2"]
    assert report.label_of("schedule-every-1@esper-flops", {"lr_schedule": "cosine"}) == report.FITTED_LABEL


def test_a_static_control_cheaper_than_esper_is_given_esper_flops_by_a_longer_run() -> None:
    from morpho.arms import longer_steps

    # 10 epochs of 10 steps: a step costs 9, a validation pass 10 (1,000 in all)
    record = {"flops": {"total": 1000.0, "train": 900.0, "validation": 100.0}}
    steps = longer_steps(record, 2000.0, 10, 10)
    assert steps * 9 + math.ceil(steps / 10) * 10 <= 2000 < (steps + 1) * 9 + math.ceil((steps + 1) / 10) * 10
    assert steps == 200  # 20 epochs: 1,800 + 200
    assert longer_steps(record, 1005.0, 10, 10) is None  # no step more fits
    assert longer_steps(record, 1009.0, 10, 10) is None  # one more step needs a validation pass too
    assert longer_steps(record, 1019.0, 10, 10) == 101


def test_gromo_is_judged_at_esper_flops_by_its_longer_run_when_its_tutorial_run_spent_less() -> None:
    def longer(row: dict, test: float, flops: float) -> dict:
        row["milestones"] = {"esper-flops": {"test_accuracy": test, "flops": flops, "longer_run": True}}
        return row

    def gromo_target(runs: dict) -> tuple[str, bool]:
        measured = {label: (text, ok) for label, text, ok in report.targets(report.summarise(runs))}
        return measured["Esper ≥ GroMo at ≤ GroMo's FLOPs"]

    esper = [_row(s, 0.80, 0.80, flops=200.0) for s in (1, 2)]
    tutorial = [_row(s, 0.78, 0.78, flops=80.0) for s in (1, 2)]
    # a result from before the longer run: Esper spent more than GroMo, so not met
    text, ok = gromo_target({"esper": esper, "gromo": tutorial})
    assert not ok and "250% of the FLOPs of its tutorial run" in text
    # given Esper's FLOPs GroMo reaches 0.79: Esper is still ahead, at 95% of them
    runs = {"esper": esper, "gromo": [longer(r, 0.79, 210.0) for r in tutorial]}
    text, ok = gromo_target(runs)
    assert ok and text.startswith("+1.00 pp, wins/losses 2/0") and "95% of the FLOPs of its run for more epochs" in text
    # ... and where the longer run overtakes Esper, not met
    runs = {"esper": esper, "gromo": [longer(_row(s, 0.78, 0.78, flops=80.0), 0.81, 210.0) for s in (1, 2)]}
    assert gromo_target(runs)[1] is False
    summary = report.summarise(runs)
    assert report.table_arms(summary, {}) == ["esper", "gromo", "gromo@esper-flops"]
    assert "more epochs" in report.label_of("gromo@esper-flops", {"lr_schedule": "cosine"})
    # where Esper spent less than GroMo's tutorial run, that run decides
    text, ok = gromo_target({"esper": esper, "gromo": [_row(s, 0.79, 0.79, flops=400.0) for s in (1, 2)]})
    assert ok and "50% of the FLOPs of its tutorial run" in text


def test_gromo_runs_longer_by_the_epochs_that_reach_esper_flops() -> None:
    from morpho.gromo_arm import longer_epochs

    # 20 epochs cost 756 of which 56 are growth passes (35 an epoch): 1,847 needs 52 epochs
    flops = {"total": 756.0, "extra": 56.0}
    assert longer_epochs(flops, 1847.0, 20) == 52
    assert 52 * 35 + 56 >= 1847 > 51 * 35 + 56
    assert longer_epochs(flops, 757.0, 20) == 21  # at least one more epoch than the tutorial's


def test_seed_and_epoch_counts_are_checked_by_the_parser() -> None:
    from morpho.cli import parser

    args = parser().parse_args(["--seeds", "2", "--first-seed", "3", "--epochs", "4"])
    assert (args.seeds, args.first_seed, args.epochs) == (2, 3, 4)
    for bad in (["--seeds", "0"], ["--epochs", "-1"], ["--first-seed", "-3"], ["--seeds", "x"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)


@pytest.mark.parametrize("content, says", [
    (None, "cannot read it"),
    ("{not json", "not a JSON result"),
    (b"\xff\xfe", "not a JSON result"),
    ("[]", "not a result of this harness"),
    ('{"config": {}, "hosts": {}}', "not a result of this harness"),
    ('{"config": {"command": "c"}, "hosts": {"cnn": {"runs": {"esper": [{}]}}}}', "'seed'"),
    ('{"config": {"command": "c"}, "hosts": {"cnn": []}}', "host 'cnn'"),
])
def test_merge_report_and_esper_from_refuse_a_result_they_cannot_read(tmp_path, capsys, content, says) -> None:
    from morpho.cli import main

    bad = tmp_path / "bad.json"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    good = {"config": {"command": "first", "epochs": 2, "quick": True, "data": {}, "seed_base": 1,
                       "lr_schedule": "cosine", "schedule_every": [1]},
            "hosts": {"mlp": {"runs": {}, "unavailable": {}, "summary": {}}}}
    (tmp_path / "good.json").write_text(json.dumps(good))
    before = (tmp_path / "good.json").read_text()
    for argv in (["--name", "good", "--merge", str(bad)], ["--name", "bad", "--report-only"],
                 ["--quick", "--hosts", "mlp", "--arms", "static-small", "--esper-from", str(bad)]):
        assert main([*argv, "--out-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert says in err and "bad.json" in err and "Traceback" not in err
    assert (tmp_path / "good.json").read_text() == before  # nothing written over


def test_runs_that_read_nothing_of_espers_join_a_result_of_other_settings() -> None:
    """The static small and large hosts read nothing of Esper's run or rules: their runs join
    a result whose Esper ran under other settings, any other arm's do not."""
    from morpho.cli import merge, reads_esper

    def result(runs: dict, **cfg) -> dict:
        return {"config": {"epochs": 20, "quick": False, "data": {"f": 1}, "seed_base": 3,
                           "hosts": ["char"], "command": "c", "lr_schedule": "cosine", **cfg},
                "hosts": {"char": {"runs": runs, "unavailable": {}, "summary": {}}}}

    run = {"seed": 1, "test_accuracy": 0.4, "flops": {"total": 1.0}, "params": 10,
           "wall_s": 1.0, "curve": [], "milestones": None}
    new, old = {"heuristic": {"slowdown_ratio": 0.25}}, {"heuristic": {}}
    statics = result({"static-small": [run], "static-large": [run]}, **old)
    assert not reads_esper(statics)
    assert merge(result({"esper": [run]}, **new), statics) is None
    matched = {**run, "milestones": {"esper-flops": {"test_accuracy": 0.4}}}  # read Esper's FLOPs
    assert reads_esper(result({"static-large": [matched]}))
    problem = merge(result({"esper": [run]}, **new), result({"static-large": [matched]}, **old))
    assert problem and "slowdown_ratio" in problem
    problem = merge(result({"esper": [run]}, **new), result({"static-final-size": [run]}, **old))
    assert problem and "slowdown_ratio" in problem
    assert "epochs differs" in merge(result({}, **new), result({"static-small": [run]}, epochs=10))


def test_merge_takes_only_the_arms_asked_for(tmp_path) -> None:
    """`--merge OTHER --arms A,B` takes A and B from OTHER ("schedule": every spacing) and
    leaves the result's own runs of the other arms as they were."""
    from morpho.cli import main

    def run(seed: int, accuracy: float) -> dict:
        return {"seed": seed, "test_accuracy": accuracy, "flops": {"total": 1.0}, "params": 10,
                "wall_s": 1.0, "curve": []}

    def result(accuracy: float, **cfg) -> dict:
        arms = ("esper", "static-small", "static-large", "schedule-every-1")
        return {"config": {"command": f"c{accuracy}", "epochs": 2, "quick": True, "data": {},
                           "seed_base": 1, "lr_schedule": "cosine", "schedule_every": [1],
                           "hosts": ["mlp"], **cfg},
                "hosts": {"mlp": {"runs": {a: [run(1, accuracy)] for a in arms},
                                  "unavailable": {}, "summary": {}}}}

    (tmp_path / "new.json").write_text(json.dumps(result(0.5, heuristic={"slowdown_ratio": 0.25})))
    (tmp_path / "old.json").write_text(json.dumps(result(0.4)))
    assert main(["--name", "new", "--merge", str(tmp_path / "old.json"), "--arms", "esper",
                 "--out-dir", str(tmp_path)]) == 2  # Esper's of other settings: refused
    assert main(["--name", "new", "--merge", str(tmp_path / "old.json"),
                 "--arms", "static-small,static-large", "--out-dir", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "new.json").read_text())["hosts"]["mlp"]["runs"]
    taken = {arm: rs[0]["test_accuracy"] for arm, rs in runs.items()}
    assert taken == {"esper": 0.5, "static-small": 0.4, "static-large": 0.4, "schedule-every-1": 0.5}
