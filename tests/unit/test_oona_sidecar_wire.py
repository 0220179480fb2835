"""Packets between a training process and its Oona sidecar: records and control messages
round trip; packets that lie about their lengths or are not ours raise WireError."""

import struct

import pytest

from esper.oona.buffer import OutboundRecord
from esper.oona.sidecar_wire import (
    READY,
    REQUEST,
    STATS,
    WireError,
    decode_message,
    decode_record,
    encode_message,
    encode_record,
)


@pytest.mark.parametrize("key", [None, b"", b"run-1", b"\x00\xff" * 100])
@pytest.mark.parametrize("headers", [[], [("content-type", b"x"), ("traceparent", b"00-ab")]])
def test_records_round_trip(key, headers):
    record = OutboundRecord("esper.telemetry.training", key, b"\x0a\x03abc" * 50, headers)
    assert decode_record(encode_record(record)) == record


def test_an_empty_value_round_trips():
    record = OutboundRecord("t", b"k", b"", [])
    assert decode_record(encode_record(record)) == record


@pytest.mark.parametrize(
    "record",
    [
        OutboundRecord("t" * 256, None, b"v", []),
        OutboundRecord("t", b"k" * 0xFFFF, b"v", []),
        OutboundRecord("t", None, b"v", [("h" * 256, b"")]),
        OutboundRecord("t", None, b"v", [("h", b"x" * 0x10000)]),
        OutboundRecord("t", None, b"v", [("h", b"")] * 256),
    ],
)
def test_records_too_long_for_the_format_are_refused(record):
    with pytest.raises(WireError):
        encode_record(record)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"E",
        b"X" + struct.pack(">BHB", 1, 0xFFFF, 0) + b"t",  # not a record
        b"E" + struct.pack(">BHB", 9, 0xFFFF, 0) + b"t",  # topic longer than the packet
        b"E" + struct.pack(">BHB", 1, 50, 0) + b"t" + b"k",  # key longer than the packet
        b"E" + struct.pack(">BHB", 1, 0xFFFF, 2) + b"t",  # headers missing
        b"E" + struct.pack(">BHB", 1, 0xFFFF, 1) + b"t" + struct.pack(">BH", 1, 9) + b"h",
        b"E" + struct.pack(">BHB", 2, 0xFFFF, 0) + b"\xff\xfe",  # topic not UTF-8
    ],
)
def test_lying_record_packets_are_refused(packet):
    with pytest.raises(WireError):
        decode_record(packet)


def test_control_messages_round_trip():
    for kind, body in ((READY, {"pid": 5}), (STATS, {"sent": 3, "id": 2, "ok": True}),
                       (REQUEST, {"op": "flush", "id": 1, "timeout": 2.5})):
        assert decode_message(encode_message(kind, body)) == (kind, body)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"Z{}",
        b"T not json",
        b"T\xff",
        b"T[1, 2]",
        b'Q{"op": "explode", "id": 1}',
        b'Q{"op": "flush"}',
        b'Q{"op": "flush", "id": "one"}',
        b'Q{"op": "flush", "id": 1, "timeout": "soon"}',
    ],
)
def test_garbled_control_packets_are_refused(packet):
    with pytest.raises(WireError):
        decode_message(packet)
