"""The seed lifecycle transition table: the one place in code that says which stage may
follow which, and which gate guards each advance.

The same table is documented in proto/esper/leyline/v1/lifecycle.proto; a contract test
keeps the two in step.
"""

from __future__ import annotations

from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.lifecycle_pb2 import GateLevel, SeedStage

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2

# stage -> stages it may move to. FOSSILIZED is terminal; every live stage may be culled.
TRANSITIONS: dict[int, frozenset[int]] = {
    S.SEED_STAGE_DORMANT: frozenset({S.SEED_STAGE_GERMINATED}),
    S.SEED_STAGE_GERMINATED: frozenset({S.SEED_STAGE_TRAINING, S.SEED_STAGE_CULLED}),
    S.SEED_STAGE_TRAINING: frozenset({S.SEED_STAGE_BLENDING, S.SEED_STAGE_CULLED}),
    S.SEED_STAGE_BLENDING: frozenset({S.SEED_STAGE_SHADOWING, S.SEED_STAGE_CULLED}),
    S.SEED_STAGE_SHADOWING: frozenset({S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_CULLED}),
    S.SEED_STAGE_PROBATIONARY: frozenset({S.SEED_STAGE_FOSSILIZED, S.SEED_STAGE_CULLED}),
    S.SEED_STAGE_FOSSILIZED: frozenset(),
    S.SEED_STAGE_CULLED: frozenset({S.SEED_STAGE_EMBARGOED}),
    S.SEED_STAGE_EMBARGOED: frozenset({S.SEED_STAGE_RESETTING}),
    S.SEED_STAGE_RESETTING: frozenset({S.SEED_STAGE_DORMANT}),
}

# The gate that guards each advance along the main path (culls and the failure path
# are not gated: they must always be possible).
GATES: dict[tuple[int, int], int] = {
    (S.SEED_STAGE_DORMANT, S.SEED_STAGE_GERMINATED): GateLevel.GATE_LEVEL_G0,
    (S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING): GateLevel.GATE_LEVEL_G1,
    (S.SEED_STAGE_TRAINING, S.SEED_STAGE_BLENDING): GateLevel.GATE_LEVEL_G2,
    (S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING): GateLevel.GATE_LEVEL_G3,
    (S.SEED_STAGE_SHADOWING, S.SEED_STAGE_PROBATIONARY): GateLevel.GATE_LEVEL_G4,
    (S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED): GateLevel.GATE_LEVEL_G5,
}

# Stages in which a seed occupies its slot and counts against max_live_seeds.
LIVE_STAGES: frozenset[int] = frozenset(
    {
        S.SEED_STAGE_GERMINATED,
        S.SEED_STAGE_TRAINING,
        S.SEED_STAGE_BLENDING,
        S.SEED_STAGE_SHADOWING,
        S.SEED_STAGE_PROBATIONARY,
    }
)

# Stages that end a seed's life in its slot (a field report is written for each).
FINAL_STAGES: frozenset[int] = frozenset({S.SEED_STAGE_FOSSILIZED, S.SEED_STAGE_CULLED})

# Stages whose output reaches the model's forward value (alpha > 0 or merged).
BLENDED_STAGES: frozenset[int] = frozenset(
    {S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING, S.SEED_STAGE_PROBATIONARY}
)


class IllegalTransition(ValueError):
    """A stage change the lifecycle table does not allow."""

    def __init__(self, current: int, target: int) -> None:
        self.current = current
        self.target = target
        super().__init__(
            f"illegal seed transition {stage_name(current)} -> {stage_name(target)}; "
            f"allowed: {sorted(stage_name(s) for s in TRANSITIONS.get(current, ())) or 'none'}"
        )


def stage_name(stage: int) -> str:
    """'TRAINING' for SEED_STAGE_TRAINING; the raw number for unknown values."""
    try:
        return SeedStage.Name(stage).removeprefix("SEED_STAGE_")
    except ValueError:
        return str(stage)


def is_allowed(current: int, target: int) -> bool:
    """Whether the table allows current -> target."""
    return target in TRANSITIONS.get(current, frozenset())


def check_transition(current: int, target: int) -> None:
    """Raise IllegalTransition unless the table allows current -> target."""
    if not is_allowed(current, target):
        raise IllegalTransition(current, target)


def gate_for(current: int, target: int) -> int | None:
    """The gate guarding current -> target, or None for ungated transitions."""
    return GATES.get((current, target))


def next_stage(current: int) -> int | None:
    """The advance along the main path (never CULLED), or None when there is none."""
    for target in TRANSITIONS.get(current, ()):
        if target != S.SEED_STAGE_CULLED:
            return target
    return None


# ---- slots that stack -------------------------------------------------------------------
# Several slots may follow one graph node (ModelGraph.slots entries with the same node_id):
# they stack in the order the graph lists them, each seed growing on top of the function
# of the fossils below it. A stacked slot opens once every slot below it has fossilized;
# until then it stays DORMANT and refuses germination.
STACK_SEPARATOR = "@"


def stacked_slot_id(node_id: str, level: int) -> str:
    """The id of the `level`-th slot (1-based) after `node_id`: `fc1`, `fc1@2`, ..."""
    return node_id if level == 1 else f"{node_id}{STACK_SEPARATOR}{level}"


def stack_blockers(slots, stage_of) -> dict[str, str]:
    """slot id -> the slot below it that has not fossilized, for every slot that may not
    germinate yet because of its stack. `slots` are SlotInfo-like (slot_id, node_id) in
    graph order; `stage_of(slot_id)` is the slot's seed stage."""
    below: dict[str, str] = {}  # node -> the highest slot seen so far
    blocked: dict[str, str] = {}
    for slot in slots:
        prev = below.get(slot.node_id)
        if prev is not None:
            if prev in blocked:
                blocked[slot.slot_id] = blocked[prev]
            elif stage_of(prev) != S.SEED_STAGE_FOSSILIZED:
                blocked[slot.slot_id] = prev
        below[slot.node_id] = slot.slot_id
    return blocked
