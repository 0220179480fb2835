"""Where decisions come from. A PolicySource is driven by the training thread and must
never block it: `observe` hands over a snapshot, `decisions` takes whatever decisions have
arrived. Both the in-process heuristic and the remote Tamiyo session implement it.

A source whose `decisions()` can return something only after an `observe()` may say so
with a class attribute `decides_at_snapshots = True` (optional, not part of the protocol):
the session then asks it for decisions at safe points only, not after every step."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from esper.leyline.v1.control_pb2 import AdaptationDecision, DecisionAck
from esper.leyline.v1.signals_pb2 import TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import SessionOpen
from esper.leyline.v1.telemetry_pb2 import FieldReport


@runtime_checkable
class PolicySource(Protocol):
    """A source of AdaptationDecisions for one run."""

    name: str

    def start(self, open_message: SessionOpen) -> None:
        """Begin the run (the graph, slots, capabilities and budget are in the message)."""

    def snapshot_every(self) -> int | None:
        """Steps between snapshots the source asks for, or None for the session's default."""

    def observe(self, snapshot: TrainingSnapshot) -> None:
        """A new snapshot (never blocks)."""

    def decisions(self) -> list[AdaptationDecision]:
        """Decisions that arrived since the last call (never blocks)."""

    def acked(self, ack: DecisionAck) -> None:
        """The ack of a decision this source issued (never blocks)."""

    def field_report(self, report: FieldReport) -> None:
        """The outcome of a seed (never blocks)."""

    def outage(self) -> str | None:
        """Why the source cannot decide right now, or None when it is healthy."""

    def close(self) -> None:
        """Stop; pending work is dropped."""
