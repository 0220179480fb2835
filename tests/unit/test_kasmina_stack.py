"""Slots that stack (KasminaConfig.slot_depth): several seeds grow at one layer, each on top
of the fossils below it, and the policy, not one slot per layer, decides when growth ends."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from esper.kasmina import KasminaConfig, wrap
from esper.kasmina.slot import GateRefused
from esper.kasmina.state import kasmina_state, load_kasmina_state
from esper.kasmina.testing import force_fossilize
from esper.leyline.lifecycle import stack_blockers, stacked_slot_id
from esper.leyline.v1.control_pb2 import AdaptationDecision, GerminateAction
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import SlotInfo, TrainingSnapshot
from esper.policy.context import PolicyContext
from esper.policy.safety import germinate_violation

S = SeedStage
X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))


def host() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def stacked(depth: int = 3):
    return wrap(host(), example_input=X, config=KasminaConfig(slot_depth=depth))


def mlp_seed(seed: int) -> nn.Module:
    """A non-affine seed (never merged into the host): its fossil stays a residual branch."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 4), nn.GELU(), nn.Linear(4, 8))


def test_each_layer_gets_a_stack_of_slots_and_the_host_is_unchanged():
    plain = host()
    model = stacked(3)
    assert list(model.slots) == ["0", "0@2", "0@3", "2", "2@2", "2@3"]
    assert {s.node_id for s in model.slots.values()} == {"0", "2"}
    assert torch.equal(model(X), plain(X))
    assert model.state_dict().keys() == plain.state_dict().keys()
    graph = model.model_graph()
    assert [(s.slot_id, s.node_id) for s in graph.slots][:3] == [("0", "0"), ("0@2", "0"), ("0@3", "0")]
    assert {n.node_id: n.slot_id for n in graph.nodes if n.slot_id} == {"0": "0", "2": "2"}


@pytest.mark.parametrize("depth", [0, 9, True, 2.0])
def test_slot_depth_outside_its_range_is_refused(depth):
    with pytest.raises(ValueError, match="slot_depth"):
        KasminaConfig(slot_depth=depth)


def test_a_module_name_with_the_stack_separator_cannot_host_a_slot():
    model = nn.Module()
    model.add_module("a@2", nn.Linear(3, 3))
    with pytest.raises(ValueError, match="cannot host slots"):
        wrap(model, slots=["a@2"])


def test_a_stacked_slot_opens_only_once_the_slot_below_fossilized():
    model = stacked(3)
    with pytest.raises(GateRefused, match="stack_open") as refused:
        model.slot("2@2").germinate(mlp_seed(1), step=0, function_preserving=False)
    assert "slot 2 below it is DORMANT" in str(refused.value)
    assert model.slot("2@2").stage == S.SEED_STAGE_DORMANT
    model.slot("2").germinate(mlp_seed(1), step=0, function_preserving=False)
    with pytest.raises(GateRefused, match="GERMINATED"):
        model.slot("2@2").germinate(mlp_seed(2), step=0, function_preserving=False)
    with pytest.raises(GateRefused, match="slot 2@2 below it is DORMANT"):
        model.slot("2@3").germinate(mlp_seed(3), step=0, function_preserving=False)


def test_stacked_fossils_compose_in_order_and_unwrap_computes_the_same():
    model = stacked(3)
    before = model(X).detach()
    for slot_id, seed in (("2", 1), ("2@2", 2), ("2@3", 3)):
        force_fossilize(model.slot(slot_id), mlp_seed(seed))
    seeds = [model.slot(s).seed for s in ("2", "2@2", "2@3")]
    assert all(s is not None for s in seeds)  # residual fossils, not merged
    with torch.no_grad():
        # .forward: the layer's own computation, without the slots' hooks
        h = model.host[2].forward(torch.relu(model.host[0](X)))
        for seed in seeds:  # each fossil reads the output of the ones below it
            h = h + seed(h)
        expected = model.host[4](torch.relu(h))
    got = model(X).detach()
    assert not torch.allclose(got, before)
    assert torch.allclose(got, expected, atol=1e-6)
    plain = model.unwrap()
    assert torch.allclose(plain(X), got, atol=1e-6)
    with model._hooks_detached():  # re-installing every hook keeps the order
        pass
    assert torch.allclose(model(X), got, atol=1e-6)


def test_a_seed_stacked_on_a_fossil_trains_on_the_fossils_output():
    model = stacked(2)
    force_fossilize(model.slot("0"), mlp_seed(1))
    model.slot("0@2").germinate(mlp_seed(2), step=1, function_preserving=False)
    model.slot("0@2").advance(step=1)  # -> TRAINING: the value is unchanged, seed gets grads
    fossil_only = model(X).detach()
    out = model(X)
    assert torch.allclose(out, fossil_only)
    out.sum().backward()
    assert all(p.grad is not None for p in model.slot("0@2").seed_parameters())


def test_stacked_fossils_survive_a_checkpoint_round_trip():
    model = stacked(2)
    force_fossilize(model.slot("2"), mlp_seed(1))
    force_fossilize(model.slot("2@2"), mlp_seed(2))
    buf = io.BytesIO()
    torch.save({"kasmina": kasmina_state(model), "model": model.state_dict()}, buf)
    expected = model(X).detach()
    fresh = stacked(2)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    load_kasmina_state(fresh, saved["kasmina"], lambda slot, rec: mlp_seed(99))
    fresh.load_state_dict(saved["model"])
    assert torch.allclose(fresh(X), expected, atol=1e-6)


def test_stack_blockers_follow_graph_order_per_node():
    slots = [SlotInfo(slot_id=stacked_slot_id(n, k), node_id=n) for n in ("a", "b") for k in (1, 2, 3)]
    stages = {"a": S.SEED_STAGE_FOSSILIZED, "a@2": S.SEED_STAGE_TRAINING,
              "b": S.SEED_STAGE_EMBARGOED}
    blocked = stack_blockers(slots, lambda sid: stages.get(sid, S.SEED_STAGE_DORMANT))
    assert blocked == {"a@3": "a@2", "b@2": "b", "b@3": "b"}


def _ctx(model, stages: dict[str, int]) -> PolicyContext:
    snapshot = TrainingSnapshot(step=10)
    for slot_id, stage in stages.items():
        snapshot.seeds.add(slot_id=slot_id, stage=stage, seed_id="seed-0123456789ab")
    return PolicyContext.build(snapshot, model.model_graph())


def test_the_policy_sees_a_stacked_slot_open_only_on_a_fossil():
    model = stacked(2)
    ctx = _ctx(model, {"0": S.SEED_STAGE_BLENDING})
    assert [s.slot_id for s in ctx.open_slots()] == ["2"]
    decision = AdaptationDecision(germinate=GerminateAction(slot_id="0@2"))
    assert germinate_violation(decision, ctx, risk_limit=1.0, max_live=4) == \
        "slot 0@2 opens once slot 0 below it has fossilized"
    ctx = _ctx(model, {"0": S.SEED_STAGE_FOSSILIZED, "2": S.SEED_STAGE_FOSSILIZED})
    assert [s.slot_id for s in ctx.open_slots()] == ["0@2", "2@2"]


@pytest.mark.parametrize("fraction", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_growth_room_outside_its_range_is_refused(fraction):
    with pytest.raises(ValueError, match="max_seed_param_fraction"):
        KasminaConfig(max_seed_param_fraction=fraction)
