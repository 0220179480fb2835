"""The TelemetryEvent envelope: encoding, trace context, and strict decoding of hostile bytes."""

import random

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from esper.leyline.v1 import control_pb2, signals_pb2, telemetry_pb2
from esper.oona.envelope import (
    CONTENT_TYPE,
    MAX_EVENT_BYTES,
    PAYLOAD_KINDS,
    DecodeError,
    decode_event,
    encode_event,
    kafka_headers,
    new_event,
    payload_kind,
    trace_context_of,
)


def _snapshot_event(**kw):
    snap = signals_pb2.TrainingSnapshot(run_id="run-1", step=7, epoch=1)
    snap.metrics.train_loss = 0.5
    return new_event(source="tolaria", run_id="run-1", snapshot=snap, **kw)


def test_new_event_fills_the_envelope():
    event = _snapshot_event()
    assert len(event.event_id) == 36
    assert event.time.seconds > 0
    assert event.source == "tolaria" and event.run_id == "run-1"
    assert event.severity == telemetry_pb2.SEVERITY_INFO
    assert payload_kind(event) == "snapshot"
    assert event.snapshot.step == 7


def test_new_event_requires_exactly_one_known_payload():
    with pytest.raises(ValueError):
        new_event(source="x")
    with pytest.raises(ValueError, match="unknown payload kind"):
        new_event(source="x", bogus=signals_pb2.TrainingSnapshot())
    with pytest.raises(ValueError):
        new_event(
            source="x", snapshot=signals_pb2.TrainingSnapshot(), ack=control_pb2.DecisionAck()
        )


def test_round_trip_with_headers():
    event = _snapshot_event()
    decoded = decode_event(encode_event(event), kafka_headers(event))
    assert decoded == event


def test_headers_carry_content_type_and_traceparent_of_the_current_span():
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span:
        event = _snapshot_event()
        trace_id = span.get_span_context().trace_id
    headers = dict(kafka_headers(event))
    assert headers["content-type"] == CONTENT_TYPE.encode()
    assert headers["traceparent"].decode() == event.trace.traceparent
    assert f"{trace_id:032x}" in event.trace.traceparent
    # A consumer continues the trace from the headers...
    ctx = trace_context_of(event, list(headers.items()))
    assert trace.get_current_span(ctx).get_span_context().trace_id == trace_id
    # ...or from the envelope when the headers were lost (e.g. read through kcat).
    ctx = trace_context_of(event, None)
    assert trace.get_current_span(ctx).get_span_context().trace_id == trace_id


def test_untraced_event_has_no_traceparent_header():
    event = _snapshot_event()
    assert event.trace.traceparent == ""
    assert [name for name, _ in kafka_headers(event)] == ["content-type"]


def test_every_payload_kind_is_known():
    assert set(PAYLOAD_KINDS) == {
        "snapshot",
        "seed_transition",
        "decision",
        "ack",
        "field_report",
        "compile_event",
        "catalog_event",
        "alert",
        "heartbeat",
    }


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff\xff\xff\xff",
        b"\x0a\x10abc",  # truncated string field
        b"not a protobuf at all, just text",
        b"\x0a\x02\xc3\x28",  # event_id with invalid UTF-8
    ],
)
def test_garbage_bytes_raise_decode_error(value):
    with pytest.raises(DecodeError):
        decode_event(value)


def test_valid_protobuf_without_id_or_payload_is_refused():
    no_payload = telemetry_pb2.TelemetryEvent(event_id="e1", source="x")
    with pytest.raises(DecodeError, match="payload"):
        decode_event(no_payload.SerializeToString())
    no_id = _snapshot_event()
    no_id.event_id = ""
    with pytest.raises(DecodeError, match="event_id"):
        decode_event(no_id.SerializeToString())


def test_unknown_envelope_field_is_refused():
    value = encode_event(_snapshot_event()) + b"\xf8\x06\x01"  # field 111, varint 1
    with pytest.raises(DecodeError, match="unknown"):
        decode_event(value)


def test_wrong_content_type_is_refused():
    value = encode_event(_snapshot_event())
    with pytest.raises(DecodeError, match="content-type"):
        decode_event(value, [("content-type", b"application/json")])
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_event(value, [("content-type", b"\xff\xfe")])


def test_oversized_value_is_refused_before_parsing():
    with pytest.raises(DecodeError, match="exceeds"):
        decode_event(b"\x00" * (MAX_EVENT_BYTES + 1))


def test_random_bytes_never_escape_as_other_exceptions():
    rng = random.Random(7)
    good = encode_event(_snapshot_event())
    for _ in range(2000):
        if rng.random() < 0.5:
            value = rng.randbytes(rng.randint(0, 64))
        else:  # flip bytes of a valid event
            mutable = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                mutable[rng.randrange(len(mutable))] = rng.randrange(256)
            value = bytes(mutable)
        try:
            event = decode_event(value)
        except DecodeError:
            continue
        assert event.event_id and payload_kind(event)
