"""A run belongs to the identity that opened it, and its step only moves forward by a
bounded amount: an absurd step (2^63) is refused and does not poison the run. The same
against a real server with two identities: tests/integration/test_runtime_security.py."""

from __future__ import annotations

import grpc
import pytest

from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget
from esper.runtime.errors import PermissionDenied
from esper.tamiyo.runs import MAX_STEP, RunState
from tests.unit.test_tamiyo_support import graph, snapshot


def run(**kw) -> RunState:
    return RunState("r", graph(4), Capabilities(), ResourceBudget(), "heuristic", **kw)


def test_only_the_owner_may_resume() -> None:
    r = run(owner="alice")
    r.check_owner("alice")
    with pytest.raises(PermissionDenied) as denied:
        r.check_owner("mallory")
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to another identity" in str(denied.value)


@pytest.mark.parametrize("absurd", [2**63, 2**64 - 1, MAX_STEP + 1])
def test_an_absurd_step_is_refused_and_later_snapshots_still_count(absurd) -> None:
    r = run(max_step_advance=1000)
    assert r.accept_snapshot(snapshot(10)) is None
    code, detail = r.accept_snapshot(snapshot(absurd))
    assert code == "step_jump" and "snapshot.step" in detail
    assert r.last_step == 10  # nothing of the refused snapshot was kept
    assert r.accept_snapshot(snapshot(20)) is None and r.last_step == 20


def test_the_first_snapshot_may_start_late_but_not_absurdly() -> None:
    r = run(max_step_advance=1000)
    assert r.accept_snapshot(snapshot(2**63))[0] == "step_jump"
    assert r.accept_snapshot(snapshot(500_000)) is None  # a resumed run starts where it is
    assert r.accept_snapshot(snapshot(501_001))[0] == "step_jump"
    assert r.accept_snapshot(snapshot(501_000)) is None


def test_an_absurd_sequence_is_refused_too() -> None:
    r = run(max_step_advance=1000)
    assert r.accept_snapshot(snapshot(10)) is None
    far = snapshot(11)
    far.sequence = 2**64 - 1
    assert r.accept_snapshot(far)[0] == "step_jump"
    assert r.accept_snapshot(snapshot(12)) is None


def test_one_owner_cannot_push_other_owners_runs_out() -> None:
    from esper.tamiyo.runs import RunRegistry

    registry = RunRegistry(max_runs=10, max_runs_per_owner=3)
    registry.put(RunState("alice-run", graph(4), Capabilities(), ResourceBudget(), "heuristic", owner="alice"))
    for i in range(50):
        registry.put(RunState(f"m-{i}", graph(4), Capabilities(), ResourceBudget(), "heuristic", owner="mallory"))
    assert registry.get("alice-run") is not None  # still hers: mallory cannot claim the id
    assert [r for r in ("m-46", "m-47", "m-48", "m-49") if registry.get(r)] == ["m-47", "m-48", "m-49"]
    assert len(registry) == 4
