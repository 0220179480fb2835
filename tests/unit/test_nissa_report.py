"""The frames an ingest worker sends the Nissa server: round trips, and bytes that are not
a frame (truncated, lying about sizes, not JSON, unknown kind) refused with FrameError."""

import json
import struct

import pytest

from esper.leyline.v1 import signals_pb2, telemetry_pb2
from esper.nissa.config import NissaConfig
from esper.nissa.report import (
    KIND_BATCH,
    KIND_READY,
    MAX_FRAME_BYTES,
    BatchReport,
    FrameError,
    decode_frame,
    encode_frame,
    encode_report,
    frame_length,
    report_of,
)
from esper.nissa.worker import config_line, parse_setup
from esper.oona import new_event
from esper.runtime.config import ConfigError


def _report() -> BatchReport:
    events = [
        new_event(source="tolaria", run_id="r", snapshot=signals_pb2.TrainingSnapshot(step=s))
        for s in range(3)
    ]
    alert = telemetry_pb2.Alert(alert_id="a1", rule="nan_in_training", run_id="r")
    return BatchReport(
        received=4,
        bodies=[e.SerializeToString() for e in events],
        kinds={"snapshot": 3},
        latest_snapshots=[2],
        alerts=[alert.SerializeToString()],
        spans=[("00-" + "1" * 32 + "-" + "2" * 16 + "-01", "r", 3)],
        fetched_ns=10,
        stored_ns=20,
        events=events,
    )


def _split(frame: bytes):
    assert frame_length(frame[:4]) == len(frame) - 4
    return decode_frame(frame[4:])


def test_batch_report_round_trips_without_the_decoded_events():
    report = _report()
    header, blobs = _split(encode_report(report))
    back = report_of(header, blobs)
    assert back.events is None
    assert (back.received, back.bodies, back.kinds, back.latest_snapshots, back.alerts,
            back.spans, back.fetched_ns, back.stored_ns) == (
        report.received, report.bodies, report.kinds, report.latest_snapshots,
        report.alerts, report.spans, report.fetched_ns, report.stored_ns)
    assert [e.snapshot.step for e in back.new_events()] == [0, 1, 2]
    assert [e.snapshot.step for e in back.latest_snapshot_events()] == [2]
    assert [a.rule for a in back.alert_messages()] == ["nan_in_training"]


def test_a_batch_with_nothing_left_to_store_round_trips():
    """Every record of the batch was dead-lettered: no bodies, no alerts (a worker once
    crashed the frame decoder with it, and the server stopped the worker)."""
    empty = BatchReport(received=1, bodies=[], kinds={}, latest_snapshots=[], alerts=[],
                        spans=[], fetched_ns=1, stored_ns=2)
    back = report_of(*_split(encode_report(empty)))
    assert (back.received, back.bodies, back.alerts) == (1, [], [])


def test_small_frames_round_trip():
    header, blobs = _split(encode_frame(KIND_READY, {"pid": 7}))
    assert header == {"kind": KIND_READY, "pid": 7} and len(blobs) == 0


@pytest.mark.parametrize("length", [0, 3, MAX_FRAME_BYTES + 1])
def test_absurd_frame_lengths_are_refused(length):
    with pytest.raises(FrameError, match="length"):
        frame_length(struct.pack(">I", length))


def _payload(header: dict, blobs: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + blobs


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x00",
        struct.pack(">I", 99) + b"{}",  # header longer than the frame
        struct.pack(">I", 3) + b"\xff\xfe\xfd",  # not UTF-8
        struct.pack(">I", 4) + b"nope",  # not JSON
        _payload([1, 2]),  # not an object
        _payload({"kind": "gossip"}),  # unknown kind
    ],
)
def test_garbled_frames_are_refused(payload):
    with pytest.raises(FrameError):
        decode_frame(payload)




@pytest.mark.parametrize(
    "changes",
    [
        {"body_sizes": [1, 2, 3]},  # sizes that do not add up
        {"alert_sizes": [-5, 1_000_000]},  # negative size
        {"latest_snapshots": [3]},  # outside the batch
        {"received": "many"},
        {"spans": [["only-two", "r"]]},
        {"kinds": ["snapshot"]},
    ],
)
def test_batch_headers_that_disagree_with_their_blobs_are_refused(changes):
    # One frame's header and blobs: each report's events carry their own ids and times,
    # so another report's blobs may differ in size by a byte.
    original, blobs = _split(encode_report(_report()))
    with pytest.raises(FrameError):
        report_of({**original, **changes}, blobs)
    header = dict(original)
    del header["stored_ns"]
    with pytest.raises(FrameError, match="malformed"):
        report_of(header, blobs)


def test_worker_setup_line_round_trips_and_refuses_garbage():
    config = NissaConfig(postgres_dsn="postgresql://x@127.0.0.1:1/db", ingest_workers=3)
    back, worker = parse_setup(config_line(config, 2))
    assert back == config and worker == 2
    for line in (b"", b"not json\n", b'{"config": {"bogus": 1}, "worker": 0}\n',
                 b'{"config": {}, "worker": "x"}\n'):
        with pytest.raises(ConfigError, match="worker setup"):
            parse_setup(line)
    with pytest.raises(ConfigError, match="ingest_batch_max"):
        parse_setup(b'{"config": {"ingest_batch_max": 0}, "worker": 0}\n')
    assert KIND_BATCH == "batch"


def test_consumer_reports_round_trip_and_refuse_garbage():
    from esper.nissa.report import ConsumerReport, consumer_report_of, encode_consumer_report

    report = ConsumerReport(consumed={"t": 5}, decode_errors={"t": 1}, lag=[("t", 0, 7)],
                            stalled_s=12.5, dead_letters=[("t", "unstorable", 2)])
    header, blobs = _split(encode_consumer_report(report))
    assert consumer_report_of(header) == report and len(blobs) == 0
    for bad in ({"consumed": {"t": -1}, "decode_errors": {}, "lag": []},
                {"consumed": {}, "decode_errors": {}, "lag": [], "stalled_s": -1},
                {"consumed": {}, "decode_errors": {}, "lag": [], "stalled_s": "nan"},
                {"consumed": {}, "decode_errors": {}, "lag": [], "dead_letters": [["t", "x", -1]]},
                {"consumed": {}, "decode_errors": {}, "lag": [["t", "zero", 1]]},
                {"consumed": "x", "decode_errors": {}, "lag": []},
                {"decode_errors": {}, "lag": []}):
        with pytest.raises(FrameError):
            consumer_report_of({"kind": "consumer", **bad})
