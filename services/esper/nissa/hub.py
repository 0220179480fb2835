"""Fan-out of newly ingested events to StreamEvents subscribers. A slow subscriber never
slows ingest: its bounded queue drops (and counts) what it cannot take."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from esper.leyline.v1 import telemetry_pb2

# Events a subscriber may fall behind by before its oldest-undelivered events are dropped.
SUBSCRIBER_QUEUE = 1_000


@dataclass(frozen=True)
class EventFilter:
    """Which events a subscriber wants (empty fields: everything)."""

    run_id: str = ""
    kinds: frozenset[str] = frozenset()
    min_severity: int = 0

    def matches(self, event: telemetry_pb2.TelemetryEvent) -> bool:
        if self.run_id and event.run_id != self.run_id:
            return False
        if self.kinds and (event.WhichOneof("payload") or "") not in self.kinds:
            return False
        severity = event.severity or telemetry_pb2.SEVERITY_INFO  # UNSPECIFIED means INFO
        return severity >= self.min_severity


@dataclass(eq=False)
class Subscription:
    filter: EventFilter
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    dropped: int = 0


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self, event_filter: EventFilter) -> Subscription:
        subscription = Subscription(event_filter)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def publish(self, events: list[telemetry_pb2.TelemetryEvent]) -> None:
        for subscription in self._subscribers:
            for event in events:
                if not subscription.filter.matches(event):
                    continue
                try:
                    subscription.queue.put_nowait(event)
                except asyncio.QueueFull:
                    subscription.dropped += 1

    def __len__(self) -> int:
        return len(self._subscribers)
