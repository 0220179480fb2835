"""The policy interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from esper.leyline.v1.control_pb2 import AdaptationDecision
from esper.policy.context import PolicyContext


@runtime_checkable
class Policy(Protocol):
    """Turns what a run looks like now into one decision (a wait when nothing should be done)."""

    name: str

    @property
    def version(self) -> str:
        """"name@version", stamped on every decision."""
        ...

    def decide(self, ctx: PolicyContext) -> AdaptationDecision: ...
