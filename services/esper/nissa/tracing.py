"""Nissa continues the producers' traces: for each trace context found among a stored
batch's events (the W3C traceparent Tolaria, Tamiyo, Tezzeret and Urza put in the envelope),
one `nissa.ingest` span is recorded as a child of the producer's span, from the batch's
fetch to its database commit. One span per distinct parent, not per event: a batch holds
thousands of events but only a few producer spans (a Tolaria safe point publishes several
events under one span)."""

from __future__ import annotations

from collections import Counter

from opentelemetry import trace

from esper.leyline.v1 import telemetry_pb2
from esper.oona.envelope import trace_context_of

tracer = trace.get_tracer("esper.nissa")

# Spans recorded per batch at most: bounds the cost of a batch from many producers.
MAX_SPANS_PER_BATCH = 64


def trace_parents(events: list[telemetry_pb2.TelemetryEvent]) -> list[tuple[str, str, int]]:
    """(traceparent, run id, events) of the most frequent producer spans among `events`,
    at most MAX_SPANS_PER_BATCH of them."""
    parents = Counter(e.trace.traceparent for e in events if e.trace.traceparent)
    if not parents:
        return []
    runs = {e.trace.traceparent: e.run_id for e in events if e.trace.traceparent}
    return [(parent, runs[parent], count)
            for parent, count in parents.most_common(MAX_SPANS_PER_BATCH)]


def record_ingest_spans(
    parents: list[tuple[str, str, int]], fetched_ns: int, stored_ns: int
) -> int:
    """Record the child spans of one stored batch (its trace_parents); returns how many."""
    recorded = 0
    for traceparent, run_id, count in parents[:MAX_SPANS_PER_BATCH]:
        probe = telemetry_pb2.TelemetryEvent()
        probe.trace.traceparent = traceparent
        context = trace_context_of(probe)
        if not trace.get_current_span(context).get_span_context().is_valid:
            continue
        span = tracer.start_span(
            "nissa.ingest", context=context, start_time=fetched_ns,
            attributes={"esper.run_id": run_id, "esper.events": count},
        )
        span.end(end_time=stored_ns)
        recorded += 1
    return recorded
