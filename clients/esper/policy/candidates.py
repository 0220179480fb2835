"""Where policies get concrete kernels from.

A policy never germinates a kernel the provider did not return. In the server the provider
is filled from Urza's SearchKernels; in-process and in tests it is a local list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from esper.leyline.v1.signals_pb2 import SlotInfo
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.leyline.v1.urza_pb2 import KernelCandidate


@runtime_checkable
class CandidateProvider(Protocol):
    """Kernels that could be germinated in a slot within a budget."""

    def candidates(self, slot: SlotInfo, budget: ResourceBudget) -> list[KernelCandidate]:
        """Candidates for `slot`, best first; empty when none fits or none is known."""
        ...

    @property
    def unavailable_reason(self) -> str | None:
        """Why no candidates can be had at all (e.g. the library is unreachable), or None."""
        ...


class StaticCandidateProvider:
    """Candidates from a local list: per slot id, or one list for every slot.

    A kernel is offered for a slot only when its target shape's channel width and kind
    match the slot's (a width-0 target matches any width), so a local list behaves like
    Urza's shape filter.
    """

    def __init__(
        self,
        candidates: Iterable[KernelCandidate] = (),
        per_slot: Mapping[str, Iterable[KernelCandidate]] | None = None,
        *,
        match_shape: bool = True,
    ) -> None:
        self._shared = list(candidates)
        self._per_slot = {k: list(v) for k, v in (per_slot or {}).items()}
        self._match_shape = match_shape

    @property
    def unavailable_reason(self) -> str | None:
        return None

    def candidates(self, slot: SlotInfo, budget: ResourceBudget) -> list[KernelCandidate]:
        pool = self._per_slot.get(slot.slot_id, self._shared)
        if not self._match_shape:
            return list(pool)
        return [c for c in pool if _fits_shape(c, slot)]


class NoCandidateProvider:
    """No library at all (e.g. Urza unreachable): policies will not germinate, and say why."""

    def __init__(self, reason: str = "no kernel library is configured") -> None:
        self._reason = reason

    @property
    def unavailable_reason(self) -> str | None:
        return self._reason

    def candidates(self, slot: SlotInfo, budget: ResourceBudget) -> list[KernelCandidate]:
        return []


def _fits_shape(candidate: KernelCandidate, slot: SlotInfo) -> bool:
    target = candidate.kernel.target.shape
    if target.kind and slot.shape.kind and target.kind != slot.shape.kind:
        return False
    return not target.channels or not slot.shape.channels or target.channels == slot.shape.channels
