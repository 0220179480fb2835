"""What a stored ingest batch tells the rest of Nissa, and its frame on a worker's pipe.

An ingest worker (a separate process, see `esper.nissa.workers`) stores batches and
reports each one to the Nissa server process, which owns the live tail, the Prometheus
gauges, the alert producer and the trace exporter. The in-process ingest hands the same
report over without framing. Frames carry no pickles: a JSON header and the events'
protobuf bytes.

Frame: 4-byte big-endian length of the rest, 4-byte big-endian length of the JSON header,
the header, then the new events' bodies and the alerts' bodies back to back (their sizes
are in the header). Pure logic."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from esper.leyline.v1 import telemetry_pb2

_LENGTH = struct.Struct(">I")
# A batch of 50,000 events of up to 4 MiB each could exceed this; ingest batches are a few
# MiB. A length above it means the stream is not ours or is out of step.
MAX_FRAME_BYTES = 1 << 30

KIND_READY = "ready"
KIND_ERROR = "error"
KIND_ASSIGNED = "assigned"
KIND_BATCH = "batch"
KIND_CONSUMER = "consumer"
FRAME_KINDS = frozenset({KIND_READY, KIND_ERROR, KIND_ASSIGNED, KIND_BATCH, KIND_CONSUMER})


class FrameError(ValueError):
    """Bytes on a worker's pipe that are not a frame of this module."""


@dataclass
class BatchReport:
    """One stored batch: its new events, what the rules raised, and its trace parents."""

    # Records consumed in the batch (new events plus redelivered ones).
    received: int
    # The new events' serialized bytes, in the order they were consumed.
    bodies: list[bytes]
    # New events by payload kind.
    kinds: dict[str, int]
    # Positions in `bodies` of the latest snapshot of each run (for the run gauges).
    latest_snapshots: list[int]
    # Serialized Alerts the rules raised on the batch and stored with it.
    alerts: list[bytes]
    # (traceparent, run id, events) of the producers' spans among the new events.
    spans: list[tuple[str, str, int]]
    # Wall-clock ns when the batch was polled and when its transaction committed.
    fetched_ns: int
    stored_ns: int
    # The decoded new events, when the report did not cross a process boundary.
    events: list[telemetry_pb2.TelemetryEvent] | None = field(default=None, repr=False)

    def new_events(self) -> list[telemetry_pb2.TelemetryEvent]:
        """The new events, decoded (once) from their bodies when not at hand."""
        if self.events is None:
            self.events = [telemetry_pb2.TelemetryEvent.FromString(b) for b in self.bodies]
        return self.events

    def latest_snapshot_events(self) -> list[telemetry_pb2.TelemetryEvent]:
        if self.events is not None:
            return [self.events[i] for i in self.latest_snapshots]
        return [telemetry_pb2.TelemetryEvent.FromString(self.bodies[i])
                for i in self.latest_snapshots]

    def alert_messages(self) -> list[telemetry_pb2.Alert]:
        return [telemetry_pb2.Alert.FromString(b) for b in self.alerts]


def encode_frame(kind: str, header: dict[str, Any] | None = None,
                 blobs: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """A frame of `kind` with a JSON header and binary blobs (sizes go in the header)."""
    head = json.dumps({"kind": kind, **(header or {})}, separators=(",", ":")).encode()
    body = b"".join(blobs)
    return b"".join((_LENGTH.pack(4 + len(head) + len(body)), _LENGTH.pack(len(head)), head,
                     body))


def encode_report(report: BatchReport) -> bytes:
    header = {
        "received": report.received,
        "body_sizes": [len(b) for b in report.bodies],
        "alert_sizes": [len(a) for a in report.alerts],
        "kinds": report.kinds,
        "latest_snapshots": report.latest_snapshots,
        "spans": report.spans,
        "fetched_ns": report.fetched_ns,
        "stored_ns": report.stored_ns,
    }
    return encode_frame(KIND_BATCH, header, [*report.bodies, *report.alerts])


def frame_length(prefix: bytes) -> int:
    """The length of the frame after its 4-byte `prefix`; FrameError when absurd."""
    (length,) = _LENGTH.unpack(prefix)
    if not 4 <= length <= MAX_FRAME_BYTES:
        raise FrameError(f"frame length {length} is out of range")
    return length


def decode_frame(payload: bytes) -> tuple[dict[str, Any], memoryview]:
    """(header, the blob bytes after it) of a frame's payload (without its length)."""
    if len(payload) < 4:
        raise FrameError("frame shorter than its header length")
    (head_len,) = _LENGTH.unpack_from(payload)
    if head_len > len(payload) - 4:
        raise FrameError("header length exceeds the frame")
    try:
        header = json.loads(payload[4 : 4 + head_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("kind") not in FRAME_KINDS:
        raise FrameError("header names no known frame kind")
    return header, memoryview(payload)[4 + head_len :]


def report_of(header: dict[str, Any], blobs: memoryview) -> BatchReport:
    """The BatchReport of a decoded batch frame; FrameError when its parts disagree."""
    try:
        body_sizes = [int(n) for n in header["body_sizes"]]
        alert_sizes = [int(n) for n in header["alert_sizes"]]
        if min(body_sizes + alert_sizes, default=0) < 0:
            raise FrameError("negative blob size")
        if sum(body_sizes) + sum(alert_sizes) != len(blobs):
            raise FrameError("blob sizes do not add up to the frame")
        pieces = _split(blobs, body_sizes + alert_sizes)
        latest = [int(i) for i in header["latest_snapshots"]]
        if any(not 0 <= i < len(body_sizes) for i in latest):
            raise FrameError("latest_snapshots points outside the batch")
        return BatchReport(
            received=int(header["received"]),
            bodies=pieces[: len(body_sizes)],
            kinds={str(k): int(v) for k, v in dict(header["kinds"]).items()},
            latest_snapshots=latest,
            alerts=pieces[len(body_sizes) :],
            spans=[(str(t), str(r), int(n)) for t, r, n in header["spans"]],
            fetched_ns=int(header["fetched_ns"]),
            stored_ns=int(header["stored_ns"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"batch header is malformed: {exc!r}") from None


def _split(blobs: memoryview, sizes: list[int]) -> list[bytes]:
    ends = list(accumulate(sizes))
    starts = [0, *ends[:-1]] if ends else []  # a batch whose records were all dead-lettered
    return [bytes(blobs[a:b]) for a, b in zip(starts, ends, strict=True)]


@dataclass
class ConsumerReport:
    """A worker's consumer metrics since its previous report: events decoded and records
    refused per topic (increments), and the lag of each partition it consumed."""

    consumed: dict[str, int]
    decode_errors: dict[str, int]
    lag: list[tuple[str, int, int]]
    # How long the worker's held batch has been failing to be stored (0: none held).
    stalled_s: float = 0.0
    # Dead letters sent, as (original topic, code, count) increments.
    dead_letters: list[tuple[str, str, int]] = field(default_factory=list)


def encode_consumer_report(report: ConsumerReport) -> bytes:
    return encode_frame(KIND_CONSUMER, {"consumed": report.consumed,
                                        "decode_errors": report.decode_errors,
                                        "lag": report.lag, "stalled_s": report.stalled_s,
                                        "dead_letters": report.dead_letters})


def consumer_report_of(header: dict[str, Any]) -> ConsumerReport:
    try:
        counts = [{str(t): int(n) for t, n in dict(header[k]).items()}
                  for k in ("consumed", "decode_errors")]
        if any(n < 0 for c in counts for n in c.values()):
            raise FrameError("negative consumer count")
        lag = [(str(t), int(p), int(n)) for t, p, n in header["lag"]]
        stalled_s = float(header.get("stalled_s", 0.0))
        if not 0 <= stalled_s < float("inf"):
            raise FrameError("stalled_s is not a duration")
        dead = [(str(t), str(c), int(n)) for t, c, n in header.get("dead_letters", [])]
        if any(n < 0 for _, _, n in dead):
            raise FrameError("negative dead-letter count")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"consumer header is malformed: {exc!r}") from None
    return ConsumerReport(consumed=counts[0], decode_errors=counts[1], lag=lag,
                          stalled_s=stalled_s, dead_letters=dead)
