"""Legal blueprint state changes in the library (pure data, tested exhaustively).

A blueprint moves forward through the forge (SUBMITTED -> COMPILING -> VALIDATED ->
CHARACTERISED, steps may be skipped), may go back to COMPILING to be built for another
target or retried, and back to SUBMITTED when a compile job is cancelled. REJECTED is
reachable until a kernel was characterised. RETIRED is reachable from every state and
is terminal. Setting the current state again is a no-op (redelivered Tezzeret updates).
"""

from __future__ import annotations

from esper.leyline.v1 import blueprint_pb2 as bp

SUBMITTED = bp.BLUEPRINT_STATE_SUBMITTED
COMPILING = bp.BLUEPRINT_STATE_COMPILING
VALIDATED = bp.BLUEPRINT_STATE_VALIDATED
REJECTED = bp.BLUEPRINT_STATE_REJECTED
CHARACTERISED = bp.BLUEPRINT_STATE_CHARACTERISED
RETIRED = bp.BLUEPRINT_STATE_RETIRED

TRANSITIONS: dict[int, frozenset[int]] = {
    SUBMITTED: frozenset({COMPILING, VALIDATED, CHARACTERISED, REJECTED, RETIRED}),
    COMPILING: frozenset({SUBMITTED, VALIDATED, CHARACTERISED, REJECTED, RETIRED}),
    VALIDATED: frozenset({COMPILING, CHARACTERISED, REJECTED, RETIRED}),
    CHARACTERISED: frozenset({COMPILING, RETIRED}),
    REJECTED: frozenset({COMPILING, RETIRED}),
    RETIRED: frozenset(),
}
# States whose kernels SearchKernels never offers.
NOT_OFFERED = frozenset({REJECTED, RETIRED})


def is_legal(current: int, new: int) -> bool:
    """Whether `current` -> `new` is allowed (the same state counts as allowed)."""
    return new == current or new in TRANSITIONS.get(current, frozenset())


def allowed_from(current: int) -> list[str]:
    return sorted(bp.BlueprintState.Name(s) for s in TRANSITIONS.get(current, frozenset()))
