"""The heuristic's residual-stream rule: on the growth signal it widens a declared stream
before growing seeds, by its fraction of the declared width, within the stream's limit and
the parameter budget; the safety check withholds a widening that Kasmina would refuse."""

from __future__ import annotations

import dataclasses
import math

import pytest

from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.control_pb2 import AdaptationDecision, WidenStreamAction
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import ResidualStreamState
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.policy import (
    HeuristicConfig,
    HeuristicPolicy,
    PolicyContext,
    RunHistory,
    StaticCandidateProvider,
)
from esper.policy.budget import params_used
from esper.policy.decisions import action_slot, make_decision
from esper.policy.heuristic import stream_features
from esper.policy.plateau import pace
from esper.policy.safety import violation
from esper.tolaria.policy.local import LOCAL_HEURISTIC, LocalPolicy
from tests.unit.test_tamiyo_support import (
    IMPROVING,
    PLATEAU,
    candidate,
    graph,
    loss_snapshot,
    seed,
    snapshot,
)

policy = HeuristicPolicy()
# The local thresholds with the stream's rules of Tamiyo's server defaults (a quarter of the
# width per widening, a second epoch unless the widening sped learning up, nothing read off
# the first epoch), which these tests pin; the local defaults are tested on their own below.
SERVER_STREAM = dataclasses.replace(
    LOCAL_HEURISTIC, stream_growth_fraction=HeuristicConfig.stream_growth_fraction,
    stream_wait_unless_faster=True, stream_first_epoch_pace=False)


def _stream(width: int = 32, max_width: int = 48, added: int = 0) -> ResidualStreamState:
    return ResidualStreamState(width=width, declared_width=32, max_width=max_width,
                               feature_multiple=4, params_per_feature=1000, params_added=added)


def _ctx(stream: ResidualStreamState | None = None, *, seeds=(), history=PLATEAU,
         budget: ResourceBudget | None = None) -> PolicyContext:
    snap = snapshot(seeds=seeds)
    if stream is not None:
        snap.stream.CopyFrom(stream)
    return PolicyContext.build(snap, graph(), budget=budget or ResourceBudget(),
                               history=RunHistory(val_losses=list(history)),
                               candidates=StaticCandidateProvider([candidate()]))


def test_the_signal_widens_the_stream_before_any_seed() -> None:
    d = policy.decide(_ctx(_stream()))
    assert d.WhichOneof("action") == "widen_stream", d.rationale
    assert d.widen_stream.features == 8
    assert "plateaued" in d.rationale and "32 -> 40" in d.rationale
    assert action_slot(d) is None


@pytest.mark.parametrize("case", ["at its limit", "a seed grew", "over the budget", "flops budget"])
def test_no_widening_falls_back_to_seeds(case: str) -> None:
    kwargs = {
        "at its limit": {"stream": _stream(width=48)},
        "a seed grew": {"stream": _stream(), "seeds": [seed("s0", SeedStage.SEED_STAGE_FOSSILIZED)]},
        "over the budget": {"stream": _stream(), "budget": ResourceBudget(max_added_params=5000)},
        "flops budget": {"stream": _stream(), "budget": ResourceBudget(max_training_flops=1e12)},
    }[case]
    d = policy.decide(_ctx(**kwargs))
    assert d.WhichOneof("action") != "widen_stream", d.rationale


def test_no_widening_without_the_signal() -> None:
    d = policy.decide(_ctx(_stream(), history=IMPROVING))
    assert d.WhichOneof("action") == "wait" and "no plateau" in d.rationale


def test_features_round_to_the_multiple_and_fit_the_room() -> None:
    assert stream_features(_ctx(_stream()), 0.25) == 8
    assert stream_features(_ctx(_stream(width=44)), 0.25) == 4
    assert stream_features(_ctx(_stream()), 0.01) == 4  # at least one multiple
    assert stream_features(_ctx(_stream()), 0.0) == 0
    assert stream_features(_ctx(None), 0.25) == 0


@pytest.mark.parametrize("features, stream, seeds, words", [
    (8, None, (), "declares no residual stream"),
    (6, _stream(), (), "not a positive multiple of 4"),
    (20, _stream(), (), "exceeds the stream's limit 48"),
    (8, _stream(), [seed("s0", SeedStage.SEED_STAGE_TRAINING)], "live seeds"),
    (8, _stream(added=9_000), (), "the budget has 1000 left"),
])
def test_safety_withholds_what_kasmina_would_refuse(features, stream, seeds, words) -> None:
    ctx = _ctx(stream, seeds=seeds, budget=ResourceBudget(max_added_params=10_000))
    d = make_decision(ctx, WidenStreamAction(features=features), policy_version="t", horizon_steps=5,
                      confidence=1.0, rationale="")
    assert words in violation(d, ctx, 1.0, 4)


def test_stream_parameters_count_against_the_budget() -> None:
    assert params_used(_ctx(_stream(added=1234))) == 1234


def test_slot_shapes_follow_the_seed_states_after_a_widening() -> None:
    grown = seed("s1", SeedStage.SEED_STAGE_DORMANT)
    grown.slot_shape.CopyFrom(SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=40))
    widened = snapshot(seeds=[grown])
    widened.stream.CopyFrom(_stream(width=40))
    widened.stream.widenings = 1
    ctx = PolicyContext.build(widened, graph(), graph_digest="abc")
    shapes = {s.slot_id: s.shape.channels for s in ctx.open_slots()}
    assert shapes["s1"] == 40 and shapes["s0"] == 16
    assert ctx.graph_digest == ""  # the digest was of the graph as sent
    same = PolicyContext.build(snapshot(), graph(), graph_digest="abc")
    assert same.graph_digest == "abc"


def test_after_a_widening_growth_waits_for_a_validation_that_saw_it() -> None:
    widened = _stream(width=40)
    widened.widenings, widened.last_widened_epoch = 1, 5
    ctx = _ctx(widened)
    ctx.history.last_epoch = 5  # the validation that triggered the widening
    d = policy.decide(ctx)
    assert d.WhichOneof("action") == "wait" and "widened at epoch 5" in d.rationale
    ctx.history.last_epoch = 6  # a validation after it, still on a plateau
    at_every_signal = HeuristicPolicy(dataclasses.replace(policy.config, stream_wait_unless_faster=False))
    d = at_every_signal.decide(ctx)
    assert d.WhichOneof("action") == "widen_stream" and d.widen_stream.features == 8


# -- the stream's own signal: the pace of learning from the run's start loss -------------------

# Two validations after a fast first epoch: the seeds' slowdown rule cannot tell yet (it
# needs three), paced from the start loss the second epoch's gain is a tenth of the first's.
TWO_EPOCHS = [2.0, 1.8]
START = 4.0


def _early(stream: ResidualStreamState | None, start: float, config=SERVER_STREAM) -> str:
    """What the slowdown heuristic (1-epoch windows, ratio 0.5) does after TWO_EPOCHS."""
    ctx = _ctx(stream, history=TWO_EPOCHS)
    ctx.history.start_loss = start
    d = HeuristicPolicy(config).decide(ctx)
    return d.WhichOneof("action") + ": " + d.rationale


def test_pace_counts_the_first_epochs_gain_from_the_start_loss() -> None:
    assert pace(TWO_EPOCHS, 1) is None  # the first epoch's gain is invisible
    assert pace(TWO_EPOCHS, 1, start_loss=START) == pytest.approx(0.2 / 2.0)
    assert pace([2.0, 1.8, 1.7], 1, start_loss=float("nan")) == pytest.approx(0.1 / 0.2)


def test_the_stream_widens_one_epoch_earlier_paced_from_the_start() -> None:
    said = _early(_stream(), START)
    assert said.startswith("widen_stream") and "paced from the run's start loss" in said, said
    assert _early(_stream(), float("nan")).startswith("wait")  # as before: too little history
    off = dataclasses.replace(SERVER_STREAM, stream_pace_from_start=False)
    assert _early(_stream(), START, off).startswith("wait")


def test_seeds_keep_their_own_signal() -> None:
    """Without a stream (or at its limit) the start loss changes nothing: seeds grow on the
    validation losses alone."""
    assert _early(None, START).startswith("wait")
    assert _early(_stream(width=48), START).startswith("wait")


def test_the_start_loss_is_the_first_snapshot_of_epoch_zero() -> None:
    h = RunHistory()
    h.record(loss_snapshot(10, 0, float("nan")))  # not a loss yet
    h.record(loss_snapshot(20, 0, 4.1))
    h.record(loss_snapshot(30, 0, 3.0))
    h.record(loss_snapshot(40, 0, 2.9, epoch_end=True, val=2.5))
    assert h.start_loss == 4.1 and h.val_losses == [2.5]
    joined = RunHistory()  # a policy that joined mid-run never learns where the run began
    joined.record(loss_snapshot(500, 3, 1.2))
    assert math.isnan(joined.start_loss)


def test_a_local_policy_checkpoint_carries_the_start_loss() -> None:
    source = LocalPolicy()
    source.observe(loss_snapshot(10, 0, 4.1))
    state = source.state_dict()
    resumed = LocalPolicy()
    resumed.load_state_dict(state)
    assert resumed.history.start_loss == 4.1
    older = {k: v for k, v in state.items() if k != "start_loss"}  # a checkpoint from before it
    resumed.load_state_dict(older)
    assert math.isnan(resumed.history.start_loss)


# -- after a widening: the next one at once only if the widening sped learning up --------------

def _after_widening(losses: list[float], width: int = 40, config=SERVER_STREAM):
    """The slowdown heuristic's decision when the stream widened after the second of
    `losses` (epoch 2) and the run has validated up to epoch len(losses)."""
    stream = _stream(width=width)
    stream.widenings, stream.last_widened_epoch = 1, 2
    ctx = _ctx(stream, history=losses)
    ctx.history.start_loss, ctx.history.last_epoch = START, len(losses)
    return HeuristicPolicy(config).decide(ctx)


def test_a_widening_that_did_not_speed_learning_up_gets_a_second_epoch() -> None:
    slower = [2.0, 1.8, 1.65]  # 0.2 gained the epoch before the widening, 0.15 after it
    d = _after_widening(slower)
    assert d.WhichOneof("action") == "wait", d.rationale
    assert "did not speed learning up" in d.rationale and "0.15 in the epoch after" in d.rationale
    assert "width 40" in d.rationale
    d = _after_widening(slower + [1.55])  # the second epoch at the new width: widen now
    assert d.WhichOneof("action") == "widen_stream" and d.widen_stream.features == 8, d.rationale


def test_a_widening_that_sped_learning_up_is_followed_at_the_next_signal() -> None:
    d = _after_widening([2.0, 1.8, 1.5])  # 0.3 after against 0.2 before: width binds
    assert d.WhichOneof("action") == "widen_stream", d.rationale


def test_the_first_epochs_gain_counts_from_the_start_loss() -> None:
    stream = _stream(width=40)
    stream.widenings, stream.last_widened_epoch = 1, 1  # widened after the first validation
    ctx = _ctx(stream, history=[2.0, 1.5])
    ctx.history.start_loss, ctx.history.last_epoch = START, 2
    d = HeuristicPolicy(SERVER_STREAM).decide(ctx)  # 0.5 after against 2.0 from the start
    assert d.WhichOneof("action") == "wait" and "2 in the epoch before" in d.rationale, d.rationale


def test_the_wait_ends_at_the_streams_limit_and_can_be_turned_off() -> None:
    slower = [2.0, 1.8, 1.65]
    at_limit = _after_widening(slower, width=48)  # seeds: their own rules, as before
    assert "did not speed learning up" not in at_limit.rationale
    off = dataclasses.replace(SERVER_STREAM, stream_wait_unless_faster=False)
    assert _after_widening(slower, config=off).WhichOneof("action") == "widen_stream"
    local = _after_widening(slower, config=LOCAL_HEURISTIC)  # the local defaults: no wait
    assert local.WhichOneof("action") == "widen_stream" and local.widen_stream.features == 4


def test_at_the_streams_limit_seeds_need_not_wait_for_a_validation_after_the_last_widening() -> None:
    """stream_hold_at_limit=False: once the widening that brought the stream to its limit
    is made, seeds grow on the signal from before it; short of the limit the hold stays."""
    def after_widening(width: int, config) -> AdaptationDecision:
        widened = _stream(width=width)
        widened.widenings, widened.last_widened_epoch = 1, 5
        ctx = _ctx(widened)
        ctx.history.last_epoch = 5  # the validation that triggered the widening
        return HeuristicPolicy(config).decide(ctx)

    eager = dataclasses.replace(policy.config, stream_hold_at_limit=False)
    d = after_widening(48, eager)
    assert d.WhichOneof("action") == "germinate", d.rationale
    held = after_widening(48, policy.config)
    assert held.WhichOneof("action") == "wait" and "widened at epoch 5" in held.rationale
    short = after_widening(40, eager)
    assert short.WhichOneof("action") == "wait" and "widened at epoch 5" in short.rationale
    assert not LOCAL_HEURISTIC.stream_hold_at_limit  # the local defaults grow seeds at once
