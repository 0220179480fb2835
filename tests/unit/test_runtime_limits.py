"""The one set of request limits (esper.runtime.limits), the per-client log limiter and the
stream slots: pure logic over real generated messages."""

from __future__ import annotations

import random

import pytest

from esper.leyline.v1 import tamiyo_pb2, urza_pb2
from esper.leyline.v1.kernel_pb2 import KernelStats
from esper.leyline.v1.lifecycle_pb2 import SeedState
from esper.leyline.v1.signals_pb2 import GraphNode, ModelGraph, TrainingSnapshot
from esper.runtime.errors import InvalidArgument, ResourceExhausted
from esper.runtime.limits import (
    INT64_MAX,
    MAX_COUNTER,
    MAX_ID_LENGTH,
    MAX_REPEATED,
    MAX_STRING_LENGTH,
    OVERSIZED,
    check_message,
    message_problem,
)
from esper.runtime.peers import peer_host
from esper.runtime.requests import LogLimiter, Undecodable, safe_deserializer
from esper.runtime.streams import StreamSlots


def test_a_well_formed_message_passes():
    snapshot = TrainingSnapshot(run_id="run-1", step=10, sequence=3, seeds=[SeedState(slot_id="s0", stage=2)])
    assert message_problem(snapshot) is None
    check_message(tamiyo_pb2.DecideRequest(snapshot=snapshot))


@pytest.mark.parametrize("step", [2**64 - 1, MAX_COUNTER + 1])
def test_a_step_beyond_the_counter_limit_is_named(step):
    problem = message_problem(tamiyo_pb2.DecideRequest(snapshot=TrainingSnapshot(step=step)))
    assert problem.field == "snapshot.step" and "out of range" in problem.why


def test_a_counter_at_the_limit_passes_and_other_integers_stop_at_bigint():
    assert message_problem(TrainingSnapshot(step=MAX_COUNTER)) is None
    stats = KernelStats(params=INT64_MAX)
    assert message_problem(stats) is None
    stats.params = INT64_MAX + 1
    assert message_problem(stats).field == "params"
    # A cap beyond any real value means "unbounded", as Urza's search reads it.
    assert message_problem(tamiyo_pb2.ResourceBudget(max_added_params=2**64 - 1)) is None


def test_unknown_enum_values_are_refused_at_any_depth():
    request = tamiyo_pb2.DecideRequest(snapshot=TrainingSnapshot(seeds=[SeedState(slot_id="a"),
                                                                        SeedState(slot_id="b", stage=999)]))
    problem = message_problem(request)
    assert problem.field == "snapshot.seeds[1].stage" and "SeedStage" in problem.why
    problem = message_problem(tamiyo_pb2.Capabilities(dtype=99))
    assert problem.field == "dtype" and "Dtype" in problem.why


def test_ids_and_strings_are_bounded_and_the_problem_says_oversized():
    graph = ModelGraph(nodes=[GraphNode(node_id="x" * (MAX_ID_LENGTH + 1))])
    problem = message_problem(graph, "open.graph")
    assert problem.field == "open.graph.nodes[0].node_id" and problem.kind == OVERSIZED
    assert message_problem(GraphNode(node_id="x" * MAX_ID_LENGTH, op_type="y" * MAX_STRING_LENGTH)) is None
    assert message_problem(GraphNode(op_type="y" * (MAX_STRING_LENGTH + 1))).field == "op_type"


def test_nul_characters_are_refused():
    problem = message_problem(urza_pb2.RetireBlueprintRequest(blueprint_ref="BP@1.0.0", reason="a\x00b"))
    assert problem.field == "reason" and "NUL" in problem.why
    with pytest.raises(InvalidArgument) as info:
        check_message(urza_pb2.GetBlueprintRequest(blueprint_ref="x\x00"))
    assert info.value.field == "blueprint_ref"


def test_repeated_fields_are_bounded():
    graph = ModelGraph()
    graph.edges.add()
    assert message_problem(graph) is None
    for _ in range(MAX_REPEATED):
        graph.edges.add()
    problem = message_problem(graph)
    assert problem.field == "edges" and problem.kind == OVERSIZED



def test_the_fast_walk_passes_exactly_the_messages_the_naming_walk_finds_nothing_in():
    """message_problem first walks without building field paths (every request pays it)
    and names the field with the full walk only when that one fails: the two must agree."""
    from esper.leyline.v1.signals_pb2 import LayerHealth
    from esper.runtime.limits import _first_problem, _within

    rng = random.Random(16)
    mutations = [
        ("step", [MAX_COUNTER, MAX_COUNTER + 1, INT64_MAX, 5]), ("sequence", [MAX_COUNTER + 1, 3]),
        ("run_id", ["a\x00b", "ok", "r" * (MAX_STRING_LENGTH + 1)]),
        ("seeds.0.stage", [1, 99]), ("seeds.0.seed_id", ["x" * MAX_ID_LENGTH, "x" * (MAX_ID_LENGTH + 1)]),
        ("seeds.0.metrics.params", [INT64_MAX, 7]), ("layers.0.layer_id", ["fine", "a\x00", "y" * 300]),
        ("metrics.train_loss", [float("nan"), 0.5]),
    ]
    found = 0
    for _ in range(2000):
        snapshot = TrainingSnapshot(run_id="run-1", step=10, seeds=[SeedState(slot_id="s0", stage=2)],
                                    layers=[LayerHealth(layer_id="l0")])
        for path, values in rng.sample(mutations, rng.randint(1, 3)):
            *parents, name = path.split(".")
            target = snapshot
            for part in parents:
                target = target[int(part)] if part.isdigit() else getattr(target, part)
            setattr(target, name, rng.choice(values))
        request = tamiyo_pb2.SessionRequest(snapshot=snapshot)
        problem = _first_problem(request)
        assert _within(request) == (problem is None), problem
        assert message_problem(request) == problem
        found += problem is not None
    assert 0 < found < 2000

def test_undecodable_bytes_become_a_refusal_not_an_exception():
    parse = safe_deserializer(tamiyo_pb2.DecideRequest.FromString, "esper.leyline.v1.DecideRequest")
    bad = parse(b"\xff\xff\xff\xff garbage")
    assert isinstance(bad, Undecodable)
    refusal = bad.refusal()
    assert refusal.field == "request" and "DecideRequest" in refusal.message
    good = tamiyo_pb2.DecideRequest(policy="heuristic")
    assert parse(good.SerializeToString()) == good


def test_log_limiter_allows_one_line_per_client_per_period():
    now = [0.0]
    limiter = LogLimiter(60.0, clock=lambda: now[0])
    assert limiter.allow("a") and not limiter.allow("a") and limiter.allow("b")
    now[0] = 59.0
    assert not limiter.allow("a")
    now[0] = 60.0
    assert limiter.allow("a")


def test_peer_host_drops_the_port():
    assert peer_host("ipv4:127.0.0.1:5555") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"


def test_stream_slots_bound_the_server_and_each_client_and_free_on_exit():
    slots = StreamSlots("Session", max_total=3, max_per_client=2)
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(ResourceExhausted, match="per client"):
            with slots.hold("a"):
                pass
        with slots.hold("b"):
            with pytest.raises(ResourceExhausted, match="server"):
                with slots.hold("c"):
                    pass
    assert slots.total == 0 and slots.open_for("a") == 0
    with pytest.raises(RuntimeError):
        with slots.hold("a"):
            raise RuntimeError("the stream failed")
    assert slots.total == 0
