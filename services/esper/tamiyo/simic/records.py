"""The on-disk framing of Simic's training data: length-delimited Leyline protos.

A file is the magic line `MAGIC`, then records. A record is

    kind (1 byte) | payload length (unsigned LEB128 varint) | payload | CRC-32 of payload (4 bytes, big-endian)

where `kind` names the Leyline message the payload is (see `RECORD_TYPES`). Nothing is ever
pickled: a payload is parsed only as the protobuf type its kind names. A record whose kind is
unknown, whose length runs past the end of the file or past `MAX_RECORD_BYTES`, whose CRC does
not match or whose payload does not parse is counted as bad; reading resumes at the next record
when the frame itself was intact, and stops at a truncated tail.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError, Message

from esper.leyline.v1.tamiyo_pb2 import SessionOpen
from esper.leyline.v1.telemetry_pb2 import TelemetryEvent
from esper.leyline.v1.urza_pb2 import SearchKernelsResponse

MAGIC = b"ESPER-SIMIC-EPISODE v1\n"
# Record kinds and the Leyline type each payload is parsed as.
KIND_OPEN = 1  # SessionOpen: run id, model graph with slots, capabilities, budget
KIND_CANDIDATES = 2  # SearchKernelsResponse: every kernel the run could germinate
KIND_EVENT = 3  # TelemetryEvent: snapshot, decision, ack, field report, seed transition
RECORD_TYPES: dict[int, type[Message]] = {
    KIND_OPEN: SessionOpen,
    KIND_CANDIDATES: SearchKernelsResponse,
    KIND_EVENT: TelemetryEvent,
}
# A snapshot of a 100-node model is a few KB and a candidate list well under a MB; anything
# larger is corruption, not data (and must not make the reader allocate gigabytes).
MAX_RECORD_BYTES = 16 * 1024 * 1024
_CRC = struct.Struct(">I")
# A varint longer than this many bytes cannot encode a length below MAX_RECORD_BYTES.
MAX_VARINT_BYTES = 5


@dataclass
class ReadProblems:
    """Bad records met while reading, counted and described (first few kept)."""

    count: int = 0
    messages: list[str] = field(default_factory=list)
    # How many messages are kept verbatim; the count keeps going.
    keep: int = 20

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.messages) < self.keep:
            self.messages.append(f"{where}: {why}")

    def extend(self, other: ReadProblems) -> None:
        self.count += other.count
        self.messages.extend(other.messages[: max(0, self.keep - len(self.messages))])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_record(kind: int, message: Message) -> bytes:
    if kind not in RECORD_TYPES or not isinstance(message, RECORD_TYPES[kind]):
        raise TypeError(f"record kind {kind} carries {RECORD_TYPES.get(kind)}, got {type(message).__name__}")
    payload = message.SerializeToString(deterministic=True)
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
    return bytes([kind]) + _varint(len(payload)) + payload + _CRC.pack(zlib.crc32(payload))


def write_records(path: Path, records: list[tuple[int, Message]]) -> None:
    """Write a whole file atomically (temp file + rename), so a crash leaves no half file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.writelines(encode_record(kind, message) for kind, message in records)
    tmp.replace(path)


def _read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    return None


def read_records(path: Path, problems: ReadProblems) -> Iterator[tuple[int, Message]]:
    """The valid records of a file, in order; bad ones are counted in `problems`."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        problems.add(str(path), "not a Simic episode file (bad magic line)")
        return
    pos, index = len(MAGIC), 0
    while pos < len(data):
        where = f"{path.name} record {index} at byte {pos}"
        index += 1
        kind = data[pos]
        header = _read_varint(data, pos + 1)
        if header is None:
            problems.add(where, "truncated or malformed length prefix; rest of file skipped")
            return
        length, start = header
        end = start + length
        if length > MAX_RECORD_BYTES or end + _CRC.size > len(data):
            problems.add(where, f"record of {length} bytes runs past the end of the file; rest skipped")
            return
        payload = data[start:end]
        (crc,) = _CRC.unpack_from(data, end)
        pos = end + _CRC.size
        if crc != zlib.crc32(payload):
            problems.add(where, "CRC-32 mismatch (corrupt payload); record skipped")
            continue
        message_type = RECORD_TYPES.get(kind)
        if message_type is None:
            problems.add(where, f"unknown record kind {kind}; record skipped")
            continue
        try:
            yield kind, message_type.FromString(payload)
        except DecodeError as exc:
            problems.add(where, f"payload is not a valid {message_type.__name__}: {exc}")
