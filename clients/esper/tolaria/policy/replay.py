"""ReplayPolicy: replays a recorded decision log. Each decision is handed over at the first
snapshot whose step reaches its `issued_at_step`, so the same seed, data order and
decision log reproduce a run (CPU, deterministic settings) - how a surprising run is
debugged and how policies are compared fairly."""

from __future__ import annotations

from collections.abc import Iterable

from esper.leyline.v1.control_pb2 import AdaptationDecision, DecisionAck
from esper.leyline.v1.signals_pb2 import TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import SessionOpen
from esper.leyline.v1.telemetry_pb2 import FieldReport


class ReplayPolicy:
    """A PolicySource over a fixed list of decisions, in issued_at_step order."""

    name = "replay"
    # Its decisions come only out of observe(): the session looks for them at safe points.
    decides_at_snapshots = True

    def __init__(self, decisions: Iterable[AdaptationDecision]) -> None:
        self.log = sorted(decisions, key=lambda d: d.issued_at_step)
        self.position = 0  # decisions handed over so far
        self._ready: list[AdaptationDecision] = []
        self.acks: dict[str, DecisionAck] = {}
        self.reports: list[FieldReport] = []

    def start(self, open_message: SessionOpen) -> None:
        pass

    def snapshot_every(self) -> int | None:
        return None

    def observe(self, snapshot: TrainingSnapshot) -> None:
        while self.position < len(self.log) and self.log[self.position].issued_at_step <= snapshot.step:
            self._ready.append(self.log[self.position])
            self.position += 1

    def decisions(self) -> list[AdaptationDecision]:
        out, self._ready = self._ready, []
        return out

    def acked(self, ack: DecisionAck) -> None:
        self.acks[ack.decision_id] = ack

    def field_report(self, report: FieldReport) -> None:
        self.reports.append(report)

    def outage(self) -> str | None:
        return None

    def close(self) -> None:
        self._ready.clear()

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
