"""What the Nissa server process does with each stored batch, wherever it was ingested
(in this process or in an ingest worker): count it in /metrics, set the run gauges, feed
the live tail, put the raised alerts on `esper.alerts`, and record the `nissa.ingest`
spans that continue the producers' traces."""

from __future__ import annotations

import datetime as dt

from esper.nissa import metrics
from esper.nissa.hub import EventHub
from esper.nissa.report import BatchReport
from esper.nissa.tracing import record_ingest_spans
from esper.oona.envelope import new_event
from esper.oona.producer import OonaProducer
from esper.oona.topics import ALERTS

SOURCE = "nissa"


class Fanout:
    """Applies BatchReports; `ingested` counts the new events reported so far."""

    def __init__(self, hub: EventHub | None = None,
                 alert_producer: OonaProducer | None = None) -> None:
        self.hub = hub
        self.alert_producer = alert_producer
        self.ingested = 0

    def apply(self, report: BatchReport) -> None:
        self.ingested += len(report.bodies)
        record_ingest_spans(report.spans, report.fetched_ns, report.stored_ns)
        alerts = report.alert_messages() if report.alerts else []
        metrics.observe(report.kinds, report.received, [a.rule for a in alerts],
                        report.latest_snapshot_events(), dt.datetime.now(dt.UTC))
        # Decoding every event costs the server a core's worth at full ingest speed: only
        # when somebody is tailing.
        if self.hub is not None and len(self.hub) and report.bodies:
            self.hub.publish(report.new_events())
        publish_alerts(self.alert_producer, alerts)


def publish_alerts(producer: OonaProducer | None, alerts: list) -> None:
    """Put stored alerts on `esper.alerts` (Nissa ingests them back; their ids dedupe)."""
    if producer is None:
        return
    for alert in alerts:
        event = new_event(
            source=SOURCE,
            run_id=alert.run_id,
            severity=alert.severity,
            event_id=f"alert-{alert.alert_id}",
            alert=alert,
        )
        producer.publish(event, topic=ALERTS)
