"""The lifecycle table, exhaustively: every allowed transition accepted, every other pair
rejected, and the table documented in lifecycle.proto matches the one in code."""

from __future__ import annotations

import itertools
import re

import pytest

from esper.leyline import lifecycle
from esper.leyline.v1.lifecycle_pb2 import GateLevel, SeedStage
from tests.contract.leyline_descriptors import ROOT

# Written out independently of the code's table, so a slip in either shows up.
EXPECTED = {
    ("DORMANT", "GERMINATED"),
    ("GERMINATED", "TRAINING"), ("GERMINATED", "CULLED"),
    ("TRAINING", "BLENDING"), ("TRAINING", "CULLED"),
    ("BLENDING", "SHADOWING"), ("BLENDING", "CULLED"),
    ("SHADOWING", "PROBATIONARY"), ("SHADOWING", "CULLED"),
    ("PROBATIONARY", "FOSSILIZED"), ("PROBATIONARY", "CULLED"),
    ("CULLED", "EMBARGOED"),
    ("EMBARGOED", "RESETTING"),
    ("RESETTING", "DORMANT"),
}
ALL_STAGES = [v.number for v in SeedStage.DESCRIPTOR.values]  # includes UNSPECIFIED


def test_eleven_stages():
    assert len(ALL_STAGES) == 11


@pytest.mark.parametrize("current,target", list(itertools.product(ALL_STAGES, ALL_STAGES)))
def test_every_pair(current, target):
    pair = (lifecycle.stage_name(current), lifecycle.stage_name(target))
    if pair in EXPECTED:
        assert lifecycle.is_allowed(current, target)
        lifecycle.check_transition(current, target)
    else:
        assert not lifecycle.is_allowed(current, target)
        with pytest.raises(lifecycle.IllegalTransition) as err:
            lifecycle.check_transition(current, target)
        assert lifecycle.stage_name(current) in str(err.value)


def test_unknown_stage_numbers_are_rejected():
    assert not lifecycle.is_allowed(99, SeedStage.SEED_STAGE_DORMANT)
    assert not lifecycle.is_allowed(SeedStage.SEED_STAGE_DORMANT, 99)
    assert lifecycle.stage_name(99) == "99"


def test_gates_guard_the_main_path_in_order():
    path = ["DORMANT", "GERMINATED", "TRAINING", "BLENDING", "SHADOWING", "PROBATIONARY", "FOSSILIZED"]
    stages = [SeedStage.Value("SEED_STAGE_" + s) for s in path]
    gates = [lifecycle.gate_for(a, b) for a, b in zip(stages, stages[1:])]
    assert gates == [GateLevel.Value(f"GATE_LEVEL_G{i}") for i in range(6)]
    assert lifecycle.gate_for(SeedStage.SEED_STAGE_TRAINING, SeedStage.SEED_STAGE_CULLED) is None
    for a, b in zip(stages, stages[1:]):
        assert lifecycle.next_stage(a) == b
    assert lifecycle.next_stage(SeedStage.SEED_STAGE_FOSSILIZED) is None


def test_proto_documents_the_same_table():
    text = (ROOT / "proto/esper/leyline/v1/lifecycle.proto").read_text()
    documented = set()
    for line in text.splitlines():
        m = re.match(r"^//\s+([A-Z]+)\s+->\s+([A-Z |]+?)\s*(\(.*\))?$", line.strip())
        if m:
            for target in m.group(2).split("|"):
                documented.add((m.group(1), target.strip()))
    assert documented == EXPECTED
