"""The TelemetryEvent envelope on the wire: building an event, W3C trace context in the
envelope and in Kafka headers, and strict decoding of untrusted bytes."""

from __future__ import annotations

import time as _time
from collections.abc import Iterable

from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from esper.leyline.ids import new_event_id
from esper.leyline.v1 import telemetry_pb2

MESSAGE_TYPE = "esper.leyline.v1.TelemetryEvent"
CONTENT_TYPE = f"application/x-protobuf; messageType={MESSAGE_TYPE}"
HEADER_CONTENT_TYPE = "content-type"
HEADER_TRACEPARENT = "traceparent"
HEADER_TRACESTATE = "tracestate"
_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()
_CONTENT_TYPE_NORMALIZED = CONTENT_TYPE.replace(" ", "").lower()

# Kafka's default max.message.bytes is 1 MiB; anything far above it is not an event of
# ours, and refusing it early keeps a hostile producer from making us parse megabytes.
MAX_EVENT_BYTES = 4 * 1024 * 1024

PAYLOAD_KINDS: tuple[str, ...] = tuple(
    f.name for f in telemetry_pb2.TelemetryEvent.DESCRIPTOR.oneofs_by_name["payload"].fields
)
_PAYLOAD_KIND_SET = frozenset(PAYLOAD_KINDS)
_NANOS_PER_SECOND = 1_000_000_000

_PROPAGATOR = TraceContextTextMapPropagator()

Headers = list[tuple[str, bytes]]


class DecodeError(ValueError):
    """Bytes that are not a valid TelemetryEvent of this contract."""


def new_event(
    *,
    source: str,
    run_id: str = "",
    severity: int = telemetry_pb2.SEVERITY_INFO,
    event_id: str | None = None,
    time: timestamp_pb2.Timestamp | None = None,
    **payload: pb_message.Message,
) -> telemetry_pb2.TelemetryEvent:
    """A TelemetryEvent with a fresh id, the current time, the current trace context and
    exactly one payload, given by its oneof name: `new_event(source="tolaria",
    run_id=r, snapshot=snap)`."""
    if len(payload) != 1:
        raise ValueError(f"exactly one payload keyword of {PAYLOAD_KINDS} is required")
    ((kind, body),) = payload.items()
    if kind not in _PAYLOAD_KIND_SET:
        raise ValueError(f"unknown payload kind {kind!r}; expected one of {PAYLOAD_KINDS}")
    event = telemetry_pb2.TelemetryEvent(
        event_id=event_id or new_event_id(), source=source, run_id=run_id, severity=severity
    )
    if time is None:  # Timestamp.GetCurrentTime is pure Python and 5x slower than this
        seconds, nanos = divmod(_time.time_ns(), _NANOS_PER_SECOND)
        event.time.seconds = seconds
        event.time.nanos = nanos
    else:
        event.time.CopyFrom(time)
    getattr(event, kind).CopyFrom(body)
    stamp_trace(event)
    return event


def stamp_trace(
    event: telemetry_pb2.TelemetryEvent, ctx: otel_context.Context | None = None
) -> None:
    """Write the W3C trace context of `ctx` (default: the current one) into the envelope.
    Leaves the envelope's trace empty when there is no active span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    event.trace.traceparent = carrier.get(HEADER_TRACEPARENT, "")
    event.trace.tracestate = carrier.get(HEADER_TRACESTATE, "")


def kafka_headers(event: telemetry_pb2.TelemetryEvent) -> Headers:
    """The Kafka headers of an event: content type and, when traced, traceparent/tracestate."""
    headers: Headers = [(HEADER_CONTENT_TYPE, _CONTENT_TYPE_BYTES)]
    if event.trace.traceparent:
        headers.append((HEADER_TRACEPARENT, event.trace.traceparent.encode()))
    if event.trace.tracestate:
        headers.append((HEADER_TRACESTATE, event.trace.tracestate.encode()))
    return headers


def encode_event(event: telemetry_pb2.TelemetryEvent) -> bytes:
    """The wire value of an event."""
    return event.SerializeToString()


def payload_kind(event: telemetry_pb2.TelemetryEvent) -> str:
    """The oneof name of the event's payload, e.g. "snapshot"; "" when none is set."""
    return event.WhichOneof("payload") or ""


def _header_map(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers or ():
        if value is None:
            continue
        try:
            out[name.lower()] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"header {name!r} is not UTF-8") from exc
    return out


def _check_content_type(headers: Iterable[tuple[str, bytes | None]] | None) -> None:
    """Only the content-type header decides; other headers (trace context) never make an
    event undecodable. The exact bytes our producers send are recognised without decoding
    them: this runs for every record Nissa ingests."""
    for name, value in headers or ():
        if name == HEADER_CONTENT_TYPE and value == _CONTENT_TYPE_BYTES:
            continue
        if name.lower() != HEADER_CONTENT_TYPE or value is None:
            continue
        try:
            content_type = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"header {name!r} is not UTF-8") from exc
        if content_type.replace(" ", "").lower() != _CONTENT_TYPE_NORMALIZED:
            raise DecodeError(f"content-type {content_type!r} is not {CONTENT_TYPE!r}")


def decode_event(
    value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None = None
) -> telemetry_pb2.TelemetryEvent:
    """Parse untrusted bytes into a TelemetryEvent, strictly: the content type (when a
    header carries one) must be ours, the bytes must parse, the envelope must not carry
    fields this contract does not know (a payload kind we cannot handle, or garbage that
    happened to parse), and it must have an event id and a payload. Raises DecodeError."""
    if value is None:
        raise DecodeError("empty record value (tombstone)")
    if len(value) > MAX_EVENT_BYTES:
        raise DecodeError(f"value of {len(value)} bytes exceeds {MAX_EVENT_BYTES}")
    _check_content_type(headers)
    event = telemetry_pb2.TelemetryEvent()
    try:
        event.ParseFromString(value)
    except (pb_message.DecodeError, RuntimeError, ValueError) as exc:
        raise DecodeError(f"not a TelemetryEvent: {exc}") from exc
    if len(UnknownFieldSet(event)):
        raise DecodeError("envelope carries fields unknown to this contract")
    if not event.event_id:
        raise DecodeError("TelemetryEvent.event_id is empty")
    if event.WhichOneof("payload") is None:
        raise DecodeError("TelemetryEvent.payload is not set")
    return event


def trace_context_of(
    event: telemetry_pb2.TelemetryEvent | None = None,
    headers: Iterable[tuple[str, bytes | None]] | None = None,
) -> otel_context.Context:
    """The OpenTelemetry context a consumer continues the producer's trace in: from the
    Kafka headers when present, else from the envelope's TraceContext."""
    carrier = {}
    try:
        carrier = _header_map(headers)
    except DecodeError:
        carrier = {}
    if HEADER_TRACEPARENT not in carrier and event is not None and event.trace.traceparent:
        carrier = {
            HEADER_TRACEPARENT: event.trace.traceparent,
            HEADER_TRACESTATE: event.trace.tracestate,
        }
    return _PROPAGATOR.extract(carrier)
