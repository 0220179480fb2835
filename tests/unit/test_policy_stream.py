"""The heuristic's residual-stream rule: on the growth signal it widens a declared stream
before growing seeds, by its fraction of the declared width, within the stream's limit and
the parameter budget; the safety check withholds a widening that Kasmina would refuse."""

from __future__ import annotations

import pytest

from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.control_pb2 import WidenStreamAction
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import ResidualStreamState
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.policy import HeuristicPolicy, PolicyContext, RunHistory, StaticCandidateProvider
from esper.policy.budget import params_used
from esper.policy.decisions import action_slot, make_decision
from esper.policy.heuristic import stream_features
from esper.policy.safety import violation
from tests.unit.test_tamiyo_support import IMPROVING, PLATEAU, candidate, graph, seed, snapshot

policy = HeuristicPolicy()


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
    d = policy.decide(ctx)
    assert d.WhichOneof("action") == "widen_stream" and d.widen_stream.features == 8
