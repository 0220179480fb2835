"""Tamiyo's events on Oona: every decision a session sends goes to
`esper.control.decisions` (keyed by run id), so Nissa's run history shows each decision
beside the ack Tolaria published for it. Publishing never blocks a session: the producer
buffers, and drops (counted in its metrics) while the broker is down."""

from __future__ import annotations

from esper.leyline.v1.control_pb2 import AdaptationDecision
from esper.oona import OonaProducer, new_event

SOURCE = "tamiyo"


class DecisionEvents:
    def __init__(self, producer: OonaProducer | None) -> None:
        self.producer = producer

    def decision(self, run_id: str, decision: AdaptationDecision) -> None:
        if self.producer is not None:
            self.producer.publish(new_event(source=SOURCE, run_id=run_id, decision=decision))
