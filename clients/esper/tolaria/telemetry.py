"""Telemetry of a run through Oona: snapshots, seed transitions, decision acks, field
reports and outage alerts, published as TelemetryEvents without ever blocking the step
(ThreadedOonaProducer: bounded buffer, drop counter). Without a bootstrap nothing is sent."""

from __future__ import annotations

import logging
import uuid

from esper.leyline.v1 import telemetry_pb2

log = logging.getLogger(__name__)

SOURCE = "tolaria"
# Seconds to wait for the producer's event loop to come up; the producer connects to the
# broker in the background and buffers meanwhile, so this never waits on the network.
START_TIMEOUT_S = 10.0
# Seconds granted at close to deliver what is buffered.
CLOSE_FLUSH_S = 5.0


class Telemetry:
    """Publishes a run's events; a no-op (counting nothing) when `bootstrap` is None."""

    def __init__(self, run_id: str, bootstrap: str | None = None, producer=None) -> None:
        self.run_id = run_id
        self.published = 0
        # Events dropped by the time the producer was closed (its count outlives it).
        self._dropped_at_close = 0
        self._producer = producer
        self._owned = False
        if producer is None and bootstrap:
            try:
                from esper.oona import ThreadedOonaProducer
            except ModuleNotFoundError as exc:
                raise RuntimeError(
                    f"telemetry to Kafka ({bootstrap}) needs the kafka extra: pip install "
                    f"'esper[kafka]' (missing module {exc.name!r})") from exc
            _configure_tracing()
            self._producer = ThreadedOonaProducer(bootstrap).start(START_TIMEOUT_S)
            self._owned = True

    @property
    def enabled(self) -> bool:
        return self._producer is not None

    def dropped(self) -> int:
        """Events of the run that never reached the broker: refused by the full buffer,
        or not acknowledged and without room to be re-queued, or still unsent at close."""
        if self._producer is None:
            return self._dropped_at_close
        return self._producer.stats().dropped

    def publish(self, severity: int = telemetry_pb2.SEVERITY_INFO, **payload) -> None:
        if self._producer is None:
            return
        from esper.oona import new_event

        event = new_event(source=SOURCE, run_id=self.run_id, severity=severity, **payload)
        if self._producer.publish(event):
            self.published += 1

    def alert(self, rule: str, message: str, severity: int = telemetry_pb2.SEVERITY_WARNING) -> None:
        log.warning("run %s: %s: %s", self.run_id, rule, message)
        alert = telemetry_pb2.Alert(alert_id=str(uuid.uuid4()), rule=rule, severity=severity,
                                    run_id=self.run_id, service=SOURCE, message=message)
        alert.fired_at.GetCurrentTime()
        self.publish(severity=severity, alert=alert)

    def close(self) -> None:
        if self._owned and self._producer is not None:
            self._producer.stop(CLOSE_FLUSH_S)
        if self._producer is not None:
            self._dropped_at_close = self._producer.stats().dropped
            if self._dropped_at_close:
                log.warning("run %s: %d telemetry events dropped (never sent to the broker)",
                            self.run_id, self._dropped_at_close)
        self._producer = None


def _configure_tracing() -> None:
    """Record real spans in the training process so its events carry a traceparent that
    Nissa continues (exporter from ESPER_OTEL_EXPORTER: none | console | otlp, at
    ESPER_OTLP_ENDPOINT). A tracer provider the application set up itself is kept."""
    import os

    from esper.rpc.tracing import configure_tracing

    configure_tracing("tolaria", os.environ.get("ESPER_OTEL_EXPORTER", "none"),
                      os.environ.get("ESPER_OTLP_ENDPOINT", "http://127.0.0.1:4317"))
