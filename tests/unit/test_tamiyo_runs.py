"""Per-run session state: ordering, acks, outstanding decisions, resume; input validation."""

from __future__ import annotations

import math

import pytest

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import ResidualStreamState
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget, SessionOpen
from esper.policy.context import graph_digest
from esper.tamiyo.runs import RunRegistry, RunState
from esper.tamiyo.validation import (
    InvalidInput,
    Limits,
    check_budget,
    check_graph,
    check_run_id,
    snapshot_problem,
)
from tests.unit.test_tamiyo_support import graph, seed, snapshot

S = SeedStage
LIMITS = Limits(max_graph_nodes=10, max_slots=5)


def run() -> RunState:
    return RunState("r", graph(4), Capabilities(), ResourceBudget(), "heuristic")


def test_snapshot_order() -> None:
    r = run()
    assert r.accept_snapshot(snapshot(10)) is None
    assert r.accept_snapshot(snapshot(10))[0] == "repeated_snapshot"
    assert r.accept_snapshot(snapshot(5))[0] == "out_of_order_snapshot"
    later = snapshot(11)
    later.sequence = 3  # sequence went backwards though the step moved on
    assert r.accept_snapshot(later)[0] == "out_of_order_snapshot"
    assert r.accept_snapshot(snapshot(12)) is None and r.last_step == 12


def test_epoch_end_snapshot_may_follow_a_periodic_one_at_the_same_step_once() -> None:
    r = run()
    periodic = snapshot(20)
    periodic.sequence, periodic.epoch_end = 4, False
    assert r.accept_snapshot(periodic) is None
    closing = snapshot(20)
    closing.sequence, closing.epoch_end = 5, True
    assert r.accept_snapshot(closing) is None  # carries the fresh validation metrics
    again = snapshot(20)
    again.sequence, again.epoch_end = 6, True
    assert r.accept_snapshot(again)[0] == "repeated_snapshot"
    stale = snapshot(21)
    stale.sequence = 5
    assert r.accept_snapshot(stale)[0] == "out_of_order_snapshot"
    first_at_step = snapshot(30)
    first_at_step.sequence = 2  # sequence must still grow even for an epoch end
    first_at_step.epoch_end = True
    assert r.accept_snapshot(first_at_step)[0] == "out_of_order_snapshot"


def test_acks_and_outstanding_decision() -> None:
    r = run()
    d = AdaptationDecision(decision_id="d1", run_id="r", issued_at_step=10, expires_at_step=20)
    r.issue(d)
    assert r.pending(15) is d
    assert r.record_ack(DecisionAck(decision_id="zz", status=AckStatus.ACK_STATUS_APPLIED))[0] == "unknown_decision"
    assert r.record_ack(DecisionAck(decision_id="d1"))[0] == "invalid_ack"
    assert r.record_ack(DecisionAck(decision_id="d1", status=AckStatus.ACK_STATUS_REJECTED)) is None
    assert r.pending(15) is None
    assert r.record_ack(DecisionAck(decision_id="d1", status=AckStatus.ACK_STATUS_APPLIED))[0] == "duplicate_ack"
    r.issue(AdaptationDecision(decision_id="d2", expires_at_step=30))
    assert r.pending(31) is None  # expired: no longer blocks new decisions


def test_resume_adopts_client_view_and_retracts_unacked() -> None:
    r = run()
    r.issue(AdaptationDecision(decision_id="d1", expires_at_step=100))
    open_ = SessionOpen(run_id="r", graph=graph(4), seeds=[seed("s1", S.SEED_STAGE_TRAINING), seed("ghost", 3)],
                        last_applied_decision_id="d0", acked_decision_ids=["d-1"])
    r.reconcile(open_, "heuristic")
    assert set(r.seeds) == {"s1"} and r.pending(0) is None
    assert {"d0", "d-1"} <= set(r.acked)
    # A late ack of the retracted decision is still accepted once.
    assert r.record_ack(DecisionAck(decision_id="d1", status=AckStatus.ACK_STATUS_APPLIED)) is None


def test_unknown_slot_ids_are_reported() -> None:
    r = run()
    assert r.take_seeds(snapshot(1, seeds=[seed("s0", 3), seed("nope", 3)])) == ["nope"]
    assert set(r.seeds) == {"s0"}


def test_a_runs_graph_digest_is_its_graphs_and_follows_a_reopen() -> None:
    """The digest a run hands its policy contexts (the learned policy's encoding key) is its
    graph's, computed once per graph, and a reopen with another graph gets that one's."""
    r = run()
    assert r.graph_digest == graph_digest(r.graph) and r.graph_digest is r.graph_digest
    r.reconcile(SessionOpen(run_id="r", graph=graph(7)), "gnn")
    assert r.graph_digest == graph_digest(graph(7)) != graph_digest(graph(4))


def test_registry_forgets_least_recently_used() -> None:
    reg = RunRegistry(max_runs=2)
    for name in ("a", "b"):
        reg.put(RunState(name, graph(1), Capabilities(), ResourceBudget(), "heuristic"))
    reg.touch("a")
    reg.put(RunState("c", graph(1), Capabilities(), ResourceBudget(), "heuristic"))
    assert reg.get("b") is None and reg.get("a") and reg.get("c") and len(reg) == 2


@pytest.mark.parametrize("run_id", ["", "a b", "x" * 200, "é"])
def test_bad_run_ids(run_id: str) -> None:
    with pytest.raises(InvalidInput, match="open.run_id"):
        check_run_id("open.run_id", run_id)


def test_graph_and_budget_checks_name_the_field() -> None:
    with pytest.raises(InvalidInput, match="g.nodes"):
        check_graph("g", graph(11), LIMITS)
    with pytest.raises(InvalidInput, match="g.slots"):
        check_graph("g", graph(6), LIMITS)
    g = graph(3)
    g.nodes.add(node_id="n0")
    with pytest.raises(InvalidInput, match=r"g.nodes\[3\].node_id"):
        check_graph("g", g, LIMITS)
    g = graph(3)
    g.edges.add(source="n0", target="zz")
    with pytest.raises(InvalidInput, match=r"g.edges\[2\]"):
        check_graph("g", g, LIMITS)
    with pytest.raises(InvalidInput, match="b.max_risk"):
        check_budget("b", ResourceBudget(max_risk=2.0))
    with pytest.raises(InvalidInput, match="b.max_seed_latency_ms"):
        check_budget("b", ResourceBudget(max_seed_latency_ms=math.inf))
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(InvalidInput, match="b.max_training_flops"):
            check_budget("b", ResourceBudget(max_training_flops=bad, planned_steps=10))
    with pytest.raises(InvalidInput, match="b.planned_steps: must be > 0 when max_training_flops"):
        check_budget("b", ResourceBudget(max_training_flops=1e12))
    check_budget("b", ResourceBudget(max_training_flops=1e12, planned_steps=10))
    check_budget("b", ResourceBudget(planned_steps=10))  # a horizon alone limits nothing


def test_snapshot_problems() -> None:
    ok = snapshot(1)
    ok.metrics.val_loss = math.nan  # "not evaluated yet" is allowed
    assert snapshot_problem(ok, LIMITS) is None
    bad = snapshot(1)
    bad.metrics.val_loss = math.inf
    assert snapshot_problem(bad, LIMITS) == ("non_finite", "snapshot.metrics.val_loss is inf")
    bad = snapshot(1)
    bad.metrics.train_loss = math.nan
    assert snapshot_problem(bad, LIMITS)[0] == "non_finite"
    big = snapshot(1, seeds=[seed(f"s{i}", 1) for i in range(6)])
    assert snapshot_problem(big, LIMITS)[0] == "oversized"


@pytest.mark.parametrize("fields, words", [
    ({"width": 40, "declared_width": 32, "max_width": 48, "feature_multiple": 4}, None),
    ({"width": 56, "declared_width": 32, "max_width": 48, "feature_multiple": 4}, "outside"),
    ({"width": 30, "declared_width": 32, "max_width": 48, "feature_multiple": 4}, "outside"),
    ({"width": 38, "declared_width": 32, "max_width": 48, "feature_multiple": 4}, "multiple"),
    ({"width": 40, "declared_width": 32, "max_width": 48, "feature_multiple": 0}, "must be > 0"),
])
def test_snapshot_stream_problems(fields, words) -> None:
    snap = snapshot(1)
    snap.stream.CopyFrom(ResidualStreamState(**fields))
    problem = snapshot_problem(snap, LIMITS)
    if words is None:
        assert problem is None
    else:
        assert problem[0] == "invalid_stream" and words in problem[1] and "snapshot.stream" in problem[1]
