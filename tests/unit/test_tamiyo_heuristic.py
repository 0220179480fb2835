"""HeuristicPolicy on scripted run states."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from esper.leyline.v1.control_pb2 import CullReason
from esper.leyline.v1.lifecycle_pb2 import GateLevel, GateResult, SeedStage
from esper.policy import HeuristicConfig, HeuristicPolicy, NoCandidateProvider, RunHistory
from esper.policy.health import health_score
from esper.policy.plateau import is_plateau, is_slowing, pace
from tests.unit.test_tamiyo_support import (
    IMPROVING,
    PLATEAU,
    candidate,
    context,
    graph,
    health,
    seed,
    snapshot,
)

S = SeedStage
policy = HeuristicPolicy(HeuristicConfig(max_live_seeds=2))


def test_decision_envelope() -> None:
    d = policy.decide(context(val_history=IMPROVING))
    uuid.UUID(d.decision_id)
    assert d.run_id == "run-1" and d.issued_at_step == 1000
    assert d.expires_at_step == 1000 + policy.config.decision_horizon_steps
    assert d.policy_version == "heuristic@1.0.0"
    assert d.WhichOneof("action") == "wait" and "no plateau" in d.rationale


def test_plateau_germinates_worst_slot_with_best_candidate() -> None:
    layers = [health("s0", dead=0.1), health("s2", dead=0.9, grad=1e-6), health("s1", saturated=0.3)]
    cheap_good = candidate("BP-LORA", params=500, gain=0.05)
    pricey = candidate("BP-MLP-GELU", params=90_000, gain=0.05)
    risky = candidate("BP-MOE", params=100, gain=0.5, risk=0.9)
    d = policy.decide(context(layers=layers, candidates=[pricey, cheap_good, risky]))
    assert d.WhichOneof("action") == "germinate", d.rationale
    assert d.germinate.slot_id == "s2"
    assert d.germinate.kernel_id == cheap_good.kernel.kernel_id
    assert d.germinate.kernel_sha256 == cheap_good.kernel.sha256
    assert d.germinate.blueprint_ref == "BP-LORA@1.0.0"
    assert d.germinate.schedule.blend_steps > 0
    assert "plateau" in d.rationale and "s2" in d.rationale


def test_no_candidates_means_no_germinate_with_reason() -> None:
    d = policy.decide(context(candidates=[]))
    assert d.WhichOneof("action") == "wait"
    assert "no kernel offered" in d.rationale
    d = policy.decide(context(provider=NoCandidateProvider("Urza at 127.0.0.1:1 is unreachable")))
    assert d.WhichOneof("action") == "wait" and "Urza" in d.rationale


def test_over_budget_means_no_germinate() -> None:
    d = policy.decide(context(candidates=[candidate(params=5000)], max_params=4000))
    assert d.WhichOneof("action") == "wait" and "budget" in d.rationale
    # Budget partly used by a fossilized seed: 3000 + 2000 > 4000.
    used = [seed("s0", S.SEED_STAGE_FOSSILIZED, params=3000)]
    d = policy.decide(context(seeds=used, candidates=[candidate(params=2000)], max_params=4000))
    assert d.WhichOneof("action") == "wait" and "left in budget" in d.rationale
    d = policy.decide(context(seeds=used, candidates=[candidate(params=2000)], max_params=3000))
    assert d.WhichOneof("action") == "wait" and "spent" in d.rationale


def test_risk_limit_from_budget() -> None:
    d = policy.decide(context(candidates=[candidate(risk=0.4)], max_risk=0.3))
    assert d.WhichOneof("action") == "wait" and "risk" in d.rationale


def test_regression_culls() -> None:
    s = seed("s1", S.SEED_STAGE_BLENDING, alpha=0.5, val_start=1.0, val_now=1.1)
    d = policy.decide(context(seeds=[s]))
    assert d.WhichOneof("action") == "cull"
    assert d.cull.slot_id == "s1" and d.cull.reason == CullReason.CULL_REASON_REGRESSION


def test_within_tolerance_is_not_culled() -> None:
    s = seed("s1", S.SEED_STAGE_BLENDING, alpha=0.5, val_start=1.0, val_now=1.01)
    assert policy.decide(context(seeds=[s])).WhichOneof("action") != "cull"


def test_non_finite_seed_culled_for_instability() -> None:
    s = seed("s1", S.SEED_STAGE_TRAINING, non_finite=3)
    d = policy.decide(context(seeds=[s]))
    assert d.cull.reason == CullReason.CULL_REASON_INSTABILITY


def test_probation_fossilizes() -> None:
    s = seed("s0", S.SEED_STAGE_PROBATIONARY, steps=policy.config.probation_steps, alpha=1.0)
    d = policy.decide(context(seeds=[s]))
    assert d.WhichOneof("action") == "fossilize" and d.fossilize.slot_id == "s0"
    early = seed("s0", S.SEED_STAGE_PROBATIONARY, steps=1, alpha=1.0)
    assert policy.decide(context(seeds=[early])).WhichOneof("action") != "fossilize"


def test_advances_when_gate_would_pass() -> None:
    cases = [
        (seed("s0", S.SEED_STAGE_GERMINATED), S.SEED_STAGE_TRAINING),
        (seed("s0", S.SEED_STAGE_TRAINING, steps=policy.config.training_steps), S.SEED_STAGE_BLENDING),
        (seed("s0", S.SEED_STAGE_BLENDING, alpha=1.0), S.SEED_STAGE_SHADOWING),
        (seed("s0", S.SEED_STAGE_SHADOWING, steps=policy.config.shadow_steps, alpha=1.0), S.SEED_STAGE_PROBATIONARY),
    ]
    for s, target in cases:
        d = policy.decide(context(seeds=[s], val_history=IMPROVING))
        assert d.WhichOneof("action") == "advance", d.rationale
        assert d.advance.target_stage == target


def test_recently_failed_gate_is_not_asked_again() -> None:
    s = seed("s0", S.SEED_STAGE_TRAINING, steps=500)
    s.last_gate.CopyFrom(GateResult(level=GateLevel.GATE_LEVEL_G2, passed=False, step=995))
    d = policy.decide(context(seeds=[s], val_history=IMPROVING))
    assert d.WhichOneof("action") == "wait"


def test_max_live_seeds_respected() -> None:
    live = [seed("s0", S.SEED_STAGE_TRAINING, steps=1), seed("s1", S.SEED_STAGE_TRAINING, steps=1)]
    d = policy.decide(context(seeds=live, max_live=2))
    assert d.WhichOneof("action") == "wait" and "live seeds" in d.rationale
    d = HeuristicPolicy(HeuristicConfig(max_live_seeds=1)).decide(context(seeds=live[:1], max_live=8))
    assert d.WhichOneof("action") == "wait" and "limit 1" in d.rationale


def test_embargoed_slot_skipped() -> None:
    layers = [health("s0", dead=0.9), health("s1"), health("s2"), health("s3")]
    seeds = [seed("s0", S.SEED_STAGE_EMBARGOED)]
    d = policy.decide(context(seeds=seeds, layers=layers))
    assert d.germinate.slot_id != "s0"
    # An embargo window still open on a slot reported dormant also counts.
    seeds = [seed("s0", S.SEED_STAGE_DORMANT, embargo_until=5000)]
    d = policy.decide(context(seeds=seeds, layers=layers))
    assert d.WhichOneof("action") == "germinate" and d.germinate.slot_id != "s0"
    all_embargoed = [seed(f"s{i}", S.SEED_STAGE_EMBARGOED) for i in range(4)]
    d = policy.decide(context(seeds=all_embargoed))
    assert d.WhichOneof("action") == "wait" and "embargo" in d.rationale


def test_hostile_inputs_do_not_raise() -> None:
    nan = float("nan")
    layers = [health("s0", dead=nan, grad=nan), health("ghost", dead=2.0)]
    seeds = [seed("ghost-slot", S.SEED_STAGE_TRAINING), seed("s1", S.SEED_STAGE_BLENDING, val_start=nan, val_now=nan)]
    ctx = context(seeds=seeds, layers=layers, val_history=[nan, nan, 1.0])
    assert ctx.ignored_slot_ids == ("ghost-slot",)
    assert policy.decide(ctx).WhichOneof("action") in {"wait", "germinate", "advance"}
    empty = context(g=graph(0))
    assert policy.decide(empty).WhichOneof("action") == "wait"
    assert health_score(layers[0]) < 0.5  # NaN health counts as sick, not as healthy


def test_plateau_detection() -> None:
    assert is_plateau([1.0, 0.9, 0.9, 0.9, 0.9], patience=3, min_delta=0.01)
    assert not is_plateau([1.0, 0.9, 0.9, 0.85, 0.9], patience=3, min_delta=0.01)
    assert not is_plateau([1.0, 0.9], patience=3, min_delta=0.01, counter=1)
    assert is_plateau([1.0, 0.9], patience=3, min_delta=0.01, counter=3)


def test_slowdown_detection_compares_recent_gains_with_the_first_ones() -> None:
    slow = [0.77, 0.67, 0.63, 0.62, 0.59, 0.565, 0.56]  # still improving, by less and less
    assert not is_plateau(slow, patience=2, min_delta=0.01)
    assert is_slowing(slow, window=2, ratio=0.25)  # 0.03 gained lately against 0.14 early
    assert not is_slowing(slow, window=2, ratio=0.1)
    assert not is_slowing(slow[:4], window=2, ratio=0.25)  # too little history
    assert not is_slowing(slow, window=2, ratio=0.0)  # off
    assert not is_slowing([0.5, 0.6, 0.7, 0.8, 0.9], window=2, ratio=0.5)  # no early gain
    assert not is_slowing(IMPROVING, window=2, ratio=0.5)  # steady progress
    noisy = [1.0, 0.8, 0.7, 0.75, 0.69, 0.72, 0.71]  # one bad epoch is not progress lost
    assert is_slowing(noisy, window=2, ratio=0.25)
    # judged against the fastest pace, not the first window: a slow first epoch (a warm-up)
    # does not make every later epoch look fast
    assert is_slowing([1.0, 0.99, 0.80, 0.78], window=1, ratio=0.5)  # 0.02 against 0.19


def test_pace_is_the_last_gain_against_the_fastest() -> None:
    assert pace([1.0, 0.8, 0.7], window=1) == pytest.approx(0.5)  # 0.1 against 0.2
    assert pace([1.0, 0.9, 0.6], window=1) == pytest.approx(1.0)  # as fast as ever
    assert pace([1.0, 0.8, 0.9], window=1) == 0.0  # a worse epoch gains nothing on the best
    assert pace([1.0, 0.8], window=1) is None  # one gain: nothing to compare with
    assert pace([1.0, 1.1, 1.2], window=1) is None  # never improved
    assert pace([1.0, float("nan"), 0.8, 0.7], window=1) == pytest.approx(0.5)


def test_the_heuristic_grows_on_a_slowdown_only_when_asked() -> None:
    slow = [0.77, 0.67, 0.63, 0.62, 0.59, 0.565, 0.56]
    plateau_only = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, plateau_patience=2))
    d = plateau_only.decide(context(val_history=slow))
    assert d.WhichOneof("action") == "wait" and "(no plateau)" in d.rationale
    slowing = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, plateau_patience=2,
                                              slowdown_ratio=0.25))
    d = slowing.decide(context(val_history=slow))
    assert d.WhichOneof("action") == "germinate" and "diminishing (slowdown)" in d.rationale
    d = slowing.decide(context(val_history=IMPROVING))
    assert d.WhichOneof("action") == "wait" and "no slowdown" in d.rationale


def test_the_slowdown_window_can_be_shorter_than_the_plateau_patience() -> None:
    early = [0.46, 0.40, 0.383, 0.379]  # epoch 1 gained 0.06; epoch 3 0.017, epoch 4 0.004
    two = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, plateau_patience=2, slowdown_ratio=0.5))
    assert two.decide(context(val_history=early)).WhichOneof("action") == "wait"  # needs 5 epochs
    one = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, plateau_patience=2, slowdown_ratio=0.5,
                                          slowdown_window=1))
    assert one.decide(context(val_history=early[:3])).WhichOneof("action") == "germinate"
    assert one.decide(context(val_history=[0.46, 0.40, 0.36])).WhichOneof("action") == "wait"


def test_the_seeds_slowdown_can_be_paced_from_the_start_loss() -> None:
    # Epoch 1 gained 1.0 from the start loss, epoch 2 0.06: the default waits for a second
    # window after epoch 1, paced from the start the signal fires after epoch 2.
    two_epochs = [0.46, 0.40]
    config = HeuristicConfig(max_live_seeds=2, plateau_patience=2, slowdown_ratio=0.5, slowdown_window=1)
    for paced, want in ((False, "wait"), (True, "germinate")):
        ctx = context(val_history=two_epochs)
        ctx.history.start_loss = 1.46
        policy = HeuristicPolicy(dataclasses.replace(config, seed_pace_from_start=paced))
        d = policy.decide(ctx)
        assert d.WhichOneof("action") == want, d.rationale
    assert "paced from the run's start loss" in d.rationale
    ctx = context(val_history=two_epochs)  # no start loss known: as the default
    assert HeuristicPolicy(dataclasses.replace(config, seed_pace_from_start=True)) \
        .decide(ctx).WhichOneof("action") == "wait"


def test_run_history_records_epoch_ends_once() -> None:
    h = RunHistory()
    assert h.record(snapshot(epoch=1, val_loss=1.0))
    assert not h.record(snapshot(epoch=1, val_loss=0.5))
    assert not h.record(snapshot(epoch=2, val_loss=float("nan")))
    assert h.val_losses == [1.0]


def test_health_score_orders_sick_below_healthy() -> None:
    assert health_score(health("a", dead=0.8, grad=1e-6)) < health_score(health("a", dead=0.1)) < 1.0
    assert health_score(None) == 1.0


def test_heuristic_imports_without_torch_or_grpc() -> None:
    """Tolaria imports the heuristic in-process as its local policy: it must stay light."""
    import subprocess
    import sys

    code = ("import sys; from esper.policy import HeuristicPolicy; "
            "print('torch' in sys.modules, 'grpc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_growth_kernel_beats_a_mergeable_adapter_without_field_reports() -> None:
    from esper.policy.heuristic import benefit_per_cost, capacity_factor

    adapter = candidate("BP-IA3", params=16, risk=0.05)
    adapter.blueprint.metadata.mergeable = True  # folds into the host layer: no new capacity
    growth = candidate("BP-MLP-GELU", params=2128, risk=0.25)
    assert capacity_factor(adapter) == 1.0 and capacity_factor(growth) > 5.0
    assert benefit_per_cost(growth, policy.config) > benefit_per_cost(adapter, policy.config)
    d = policy.decide(context(candidates=[adapter, growth]))
    assert d.WhichOneof("action") == "germinate" and d.germinate.blueprint_ref == "BP-MLP-GELU@1.0.0"


def _with_flops(c, flops: int):
    c.kernel.stats.flops = flops
    return c


def test_compute_hungry_kernel_pays_for_its_flops() -> None:
    """A kernel that doubles the model's forward loses to a cheaper one of less capacity
    once the model's FLOPs are known; unknown model FLOPs (0) or flops_weight 0 leave
    compute unpriced, as before."""
    from esper.policy.heuristic import benefit_per_cost, compute_cost

    # As on the Fashion-MNIST CNN's conv1 slot (the host's forward is 174k FLOPs per
    # example): a 3x3 residual block against a squeeze-excitation block.
    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=296, risk=0.1), 460_000)
    cheap = _with_flops(candidate("BP-CONV-SE", params=41, risk=0.1), 9_400)
    assert policy.config.flops_weight == 0.0  # opt-in
    priced = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, flops_weight=0.5))
    config = priced.config
    assert benefit_per_cost(hungry, config) > benefit_per_cost(cheap, config)  # unpriced
    assert benefit_per_cost(hungry, config, 174_000.0) < benefit_per_cost(cheap, config, 174_000.0)
    free = HeuristicConfig(flops_weight=0.0)
    assert benefit_per_cost(hungry, free, 174_000.0) == benefit_per_cost(hungry, free)
    assert compute_cost(460_000, 0.0, config) == 0.0
    assert compute_cost(460_000, float("nan"), config) == 0.0
    assert compute_cost(0, 174_000.0, config) == 0.0
    assert compute_cost(174_000, 174_000.0, config) == pytest.approx(config.flops_weight)

    ctx = context(candidates=[hungry, cheap])
    assert priced.decide(ctx).germinate.blueprint_ref == "BP-CONV-RES3X3@1.0.0"
    ctx.snapshot.resources.model_flops_per_example = 174_000.0
    assert policy.decide(ctx).germinate.blueprint_ref == "BP-CONV-RES3X3@1.0.0"  # the default
    d = priced.decide(ctx)
    assert d.germinate.blueprint_ref == "BP-CONV-SE@1.0.0", d.rationale


def _eager_context(candidates, history=IMPROVING, model_flops: float = 100_000.0):
    ctx = context(val_history=history, candidates=candidates)
    ctx.snapshot.resources.model_flops_per_example = model_flops
    return ctx


def test_a_cheap_best_kernel_grows_at_once_without_a_signal() -> None:
    """Eager growth: with the validation loss still improving, a slot whose best kernel adds
    at most eager_flops_fraction of the model's forward FLOPs germinates now (waiting would
    save no compute); the rationale says so."""
    cheap = _with_flops(candidate("BP-CONV-SE", params=2000), 5_000)  # 5% of the model
    d = policy.decide(_eager_context([cheap]))
    assert d.WhichOneof("action") == "germinate", d.rationale
    assert d.germinate.blueprint_ref == "BP-CONV-SE@1.0.0"
    assert "cheap kernel grows at once (5.0% of the model's forward FLOPs" in d.rationale


def test_eager_growth_never_changes_which_kernel_a_slot_gets() -> None:
    """A slot whose best kernel is costly waits for the signal even when a cheap, weaker
    kernel is offered there (growing that one would take the slot from the best); with
    compute priced the cheap kernel is the best, and grows at once."""
    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=2000), 600_000)  # 6x the model
    cheap = _with_flops(candidate("BP-CONV-SE", params=41), 1_000)
    d = policy.decide(_eager_context([hungry, cheap]))
    assert d.WhichOneof("action") == "wait"
    assert "no slowdown" in d.rationale or "no plateau" in d.rationale
    assert "not every open slot's best kernel is cheap" in d.rationale
    priced = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, flops_weight=0.5))
    d = priced.decide(_eager_context([hungry, cheap]))
    assert d.WhichOneof("action") == "germinate" and d.germinate.blueprint_ref == "BP-CONV-SE@1.0.0"
    # With a signal, the costly best kernel grows as before.
    d = policy.decide(_eager_context([hungry, cheap], history=PLATEAU))
    assert d.germinate.blueprint_ref == "BP-CONV-RES3X3@1.0.0" and "plateau" in d.rationale


def test_eager_growth_waits_while_any_open_slot_has_a_costly_best_kernel() -> None:
    """One slot's best kernel is cheap, another's costly: growth timing still saves compute,
    so the signal times every seed (growing the cheap one at once lost on the CNN); once
    the costly slot is taken, the cheap one grows at once."""
    from esper.policy import StaticCandidateProvider

    cheap = _with_flops(candidate("BP-CONV-SE", params=2000), 1_000)
    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=2000), 300_000)
    per_slot = {"s0": [cheap], "s1": [hungry], "s2": [cheap], "s3": [cheap]}
    ctx = _eager_context([])
    ctx.candidates = StaticCandidateProvider(per_slot=per_slot)
    d = policy.decide(ctx)
    assert d.WhichOneof("action") == "wait" and "not every open slot" in d.rationale
    taken = _eager_context([], model_flops=100_000.0)
    taken.seeds["s1"] = seed("s1", S.SEED_STAGE_FOSSILIZED)
    taken.candidates = StaticCandidateProvider(per_slot=per_slot)
    d = policy.decide(taken)
    assert d.WhichOneof("action") == "germinate" and d.germinate.slot_id != "s1"


def test_eager_growth_waits_for_its_epochs_is_off_at_zero_and_needs_known_flops() -> None:
    cheap = _with_flops(candidate("BP-CONV-SE", params=2000), 1_000)
    assert policy.config.eager_after_epochs == 0  # from the first safe point
    assert policy.decide(_eager_context([cheap], history=[])).WhichOneof("action") == "germinate"
    late = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, eager_after_epochs=3))
    assert late.decide(_eager_context([cheap], history=[1.0, 0.9])).WhichOneof("action") == "wait"
    assert late.decide(_eager_context([cheap], history=[1.0, 0.9, 0.8])).WhichOneof("action") \
        == "germinate"
    off = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, eager_flops_fraction=0.0))
    d = off.decide(_eager_context([cheap]))
    assert d.WhichOneof("action") == "wait" and d.rationale.startswith("validation loss still improving")
    for unknown in (0.0, float("nan"), float("inf")):
        assert policy.decide(_eager_context([cheap], model_flops=unknown)).WhichOneof("action") == "wait"
    free = _with_flops(candidate("BP-CONV-SE", params=2000), 0)  # no FLOPs: cheap
    assert policy.decide(_eager_context([free])).WhichOneof("action") == "germinate"


def test_a_fruitless_eager_check_is_not_repeated_until_the_run_changes() -> None:
    """While the model's FLOPs, the seeds' parameters and the slots' stages stay as they
    were when eager growth found nothing cheap, the candidates are not queried again (a
    query per decision would cost every snapshot ~0.1 ms); a change queries again."""
    from esper.policy import StaticCandidateProvider

    class Counting(StaticCandidateProvider):
        calls = 0

        def candidates(self, slot, budget):
            Counting.calls += 1
            return super().candidates(slot, budget)

    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=2000), 300_000)
    ctx = _eager_context([hungry])
    ctx.candidates = Counting([hungry])
    d = policy.decide(ctx)
    assert d.WhichOneof("action") == "wait" and "not every open slot" in d.rationale
    queried = Counting.calls
    assert queried > 0 and ctx.history.eager_idle is not None
    again = policy.decide(ctx)
    assert again.rationale == d.rationale and Counting.calls == queried  # not queried again
    ctx.snapshot.resources.model_flops_per_example = 10_000_000.0  # the model grew
    d = policy.decide(ctx)
    assert Counting.calls > queried
    assert d.WhichOneof("action") == "germinate"  # 3% of the grown model: cheap now
    empty = _eager_context([])  # nothing offered: remembered with its own reason
    assert "no affordable candidate" in policy.decide(empty).rationale
    assert "no affordable candidate" in policy.decide(empty).rationale


def _budgeted(candidates, *, spent: float, per_step: float, budget: float, planned: int,
              step: int = 1000, history=PLATEAU, model_flops: float = 100_000.0):
    """A context whose run has a training-FLOPs budget: `spent` so far, `per_step` now."""
    ctx = context(val_history=history, candidates=candidates, step=step)
    res = ctx.snapshot.resources
    res.model_flops_per_example = model_flops
    res.training_flops, res.training_flops_per_step = spent, per_step
    ctx.budget.max_training_flops, ctx.budget.planned_steps = budget, planned
    return ctx


def test_training_flops_budget_refuses_what_the_run_cannot_afford() -> None:
    """The projection: spent + remaining planned steps x step cost x (1 + kernel share).
    At step 1000 of 2000, 1e12 spent at 1e9 a step projects 2e12 without growth; a
    kernel of 50% of the model's FLOPs adds 0.5e12 over the last 1000 steps; one of 10%
    0.1e12."""
    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=296), 50_000)
    light = _with_flops(candidate("BP-CONV-SE", params=41), 10_000)
    args = {"spent": 1e12, "per_step": 1e9, "planned": 2000}
    d = policy.decide(_budgeted([hungry, light], budget=2.6e12, **args))
    assert d.germinate.blueprint_ref == "BP-CONV-RES3X3@1.0.0", d.rationale  # both fit
    d = policy.decide(_budgeted([hungry, light], budget=2.3e12, **args))
    assert d.germinate.blueprint_ref == "BP-CONV-SE@1.0.0", d.rationale  # only the light one
    d = policy.decide(_budgeted([hungry, light], budget=2.05e12, **args))
    assert d.WhichOneof("action") == "wait"
    assert "would spend 500.0 GFLOPs over the remaining planned steps, 50.0 left in the " \
           "training-FLOPs budget" in d.rationale
    assert "would spend 100.0 GFLOPs" in d.rationale


def test_training_flops_budget_affords_more_as_the_run_nears_its_end() -> None:
    """The same kernel that overran the budget at step 1000 fits at step 1900, when only
    100 planned steps remain to pay for it; past the planned steps it costs nothing more."""
    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=296), 50_000)
    early = _budgeted([hungry], spent=1e12, per_step=1e9, budget=2.2e12, planned=2000)
    assert policy.decide(early).WhichOneof("action") == "wait"
    late = _budgeted([hungry], spent=1.9e12, per_step=1e9, budget=2.2e12, planned=2000, step=1900)
    assert policy.decide(late).WhichOneof("action") == "germinate"
    over = _budgeted([hungry], spent=2.1e12, per_step=1e9, budget=2.2e12, planned=2000, step=2100)
    assert policy.decide(over).WhichOneof("action") == "germinate"
    spent = _budgeted([hungry], spent=2.3e12, per_step=1e9, budget=2.2e12, planned=2000, step=2100)
    assert policy.decide(spent).WhichOneof("action") == "wait"


def test_training_flops_budget_unmeasured_refuses_growth() -> None:
    """A budget that cannot be checked (no FLOPs measured yet) refuses every kernel rather
    than letting the run overrun it; without a budget the same context grows."""
    light = _with_flops(candidate("BP-CONV-SE", params=41), 10_000)
    ctx = _budgeted([light], spent=0.0, per_step=0.0, budget=2e12, planned=2000)
    d = policy.decide(ctx)
    assert d.WhichOneof("action") == "wait"
    assert "training FLOPs are not measured yet" in d.rationale
    ctx.budget.max_training_flops = 0.0
    assert policy.decide(ctx).WhichOneof("action") == "germinate"


def test_training_flops_budget_eager_checks_are_not_remembered() -> None:
    """Eager growth's fruitless check is remembered while the run is unchanged, except under
    a training-FLOPs budget, which affords more as steps pass: the kernel refused at step
    1000 grows eagerly at step 1900."""
    cheap = _with_flops(candidate("BP-CONV-SE", params=41), 5_000)
    ctx = _budgeted([cheap], spent=1e12, per_step=1e9, budget=2.02e12, planned=2000,
                    history=IMPROVING)
    assert policy.decide(ctx).WhichOneof("action") == "wait"
    later = _budgeted([cheap], spent=1.9e12, per_step=1e9, budget=2.02e12, planned=2000,
                      step=1900, history=IMPROVING)
    later.history.eager_idle = ctx.history.eager_idle
    d = policy.decide(later)
    assert d.WhichOneof("action") == "germinate", d.rationale


def test_training_flops_budget_vets_any_policys_germination() -> None:
    """The safety check every policy's decision passes (the learned policy's and a remote
    one's too) applies the training-FLOPs budget: a germination of a kernel the run cannot
    afford is withheld with the reason; the same decision passes without the budget."""
    from esper.policy.safety import violation

    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=296), 50_000)
    ctx = _budgeted([hungry], spent=1e12, per_step=1e9, budget=2.2e12, planned=2000)
    d = policy.decide(_budgeted([hungry], spent=1e12, per_step=1e9, budget=3e12, planned=2000))
    assert d.WhichOneof("action") == "germinate"
    problem = violation(d, ctx, 0.5, 2)
    assert problem and "training-FLOPs budget" in problem, problem
    ctx.budget.max_training_flops = 0.0
    assert violation(d, ctx, 0.5, 2) is None


def test_a_training_flops_budget_prices_compute_when_the_policy_does_not() -> None:
    """Under a training-FLOPs budget an unpriced heuristic ranks kernels with compute
    priced at budget_flops_weight (the squeeze-excitation block over the residual 3x3
    block that the unpriced ranking picks, both fitting the budget), and says so; an own
    flops_weight, or budget_flops_weight=0, is kept as it is."""
    hungry = _with_flops(candidate("BP-CONV-RES3X3", params=296, risk=0.1), 460_000)
    cheap = _with_flops(candidate("BP-CONV-SE", params=41, risk=0.1), 9_400)
    roomy = {"spent": 1e12, "per_step": 1e9, "budget": 1e15, "planned": 2000,
             "model_flops": 174_000.0}
    unbudgeted = _budgeted([hungry, cheap], **roomy)
    unbudgeted.budget.max_training_flops = 0.0
    assert policy.decide(unbudgeted).germinate.blueprint_ref == "BP-CONV-RES3X3@1.0.0"
    d = policy.decide(_budgeted([hungry, cheap], **roomy))
    assert d.germinate.blueprint_ref == "BP-CONV-SE@1.0.0", d.rationale
    assert "compute priced at 0.5 under the training-FLOPs budget" in d.rationale
    free = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, budget_flops_weight=0.0))
    assert free.decide(_budgeted([hungry, cheap], **roomy)).germinate.blueprint_ref \
        == "BP-CONV-RES3X3@1.0.0"
    own = HeuristicPolicy(HeuristicConfig(max_live_seeds=2, flops_weight=0.01))
    d = own.decide(_budgeted([hungry, cheap], **roomy))
    assert d.germinate.blueprint_ref == "BP-CONV-RES3X3@1.0.0" and "priced at" not in d.rationale
