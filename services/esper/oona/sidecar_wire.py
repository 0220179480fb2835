"""Messages between a training process and its Oona sidecar (esper.oona.sidecar), one per
SOCK_SEQPACKET packet. No pickles: records are packed fields, control messages JSON.

Training process -> sidecar:
  b"E" record: >BHB (topic length, key length or NO_KEY, header count), topic, key, per
       header >BH (name length, value length) + name + value, then the value (the rest).
  b"Q" request: JSON {"op": "flush" | "connected" | "stop", "id": int, "timeout": float}.
Sidecar -> training process:
  b"R" ready: JSON {"pid": int}.
  b"T" stats: JSON ProducerStats fields, plus "id" and "ok" when it answers a request.

Pure logic."""

from __future__ import annotations

import json
import struct
from typing import Any

from esper.oona.buffer import OutboundRecord

RECORD, REQUEST, READY, STATS = b"E", b"Q", b"R", b"T"
OPS = frozenset({"flush", "connected", "stop"})
NO_KEY = 0xFFFF
_RECORD_HEAD = struct.Struct(">BHB")
_HEADER_HEAD = struct.Struct(">BH")
_MAX_SHORT = 0xFFFF
_MAX_BYTE = 0xFF


class WireError(ValueError):
    """A packet that is not a message of this module."""


def encode_record(record: OutboundRecord) -> bytes:
    """The packet of one record; WireError when a field is too long for the format."""
    topic = record.topic.encode()
    key = record.key
    headers = record.headers
    if len(topic) > _MAX_BYTE or len(headers) > _MAX_BYTE:
        raise WireError("topic name or header count too long for a sidecar record")
    if key is not None and len(key) >= NO_KEY:
        raise WireError("key too long for a sidecar record")
    parts = [RECORD, _RECORD_HEAD.pack(len(topic), NO_KEY if key is None else len(key),
                                       len(headers)), topic]
    if key:
        parts.append(key)
    for name, value in headers:
        raw = name.encode()
        if len(raw) > _MAX_BYTE or len(value) > _MAX_SHORT:
            raise WireError("header too long for a sidecar record")
        parts += (_HEADER_HEAD.pack(len(raw), len(value)), raw, value)
    parts.append(record.value)
    return b"".join(parts)


def decode_record(packet: bytes) -> OutboundRecord:
    """The record of an b"E" packet; WireError when the packet lies about its lengths."""
    view = memoryview(packet)
    if len(view) < 1 + _RECORD_HEAD.size or view[:1] != RECORD:
        raise WireError("not a record packet")
    topic_len, key_len, count = _RECORD_HEAD.unpack_from(view, 1)
    at = 1 + _RECORD_HEAD.size
    topic, at = _take(view, at, topic_len)
    key: bytes | None = None
    if key_len != NO_KEY:
        key, at = _take(view, at, key_len)
    headers = []
    for _ in range(count):
        if at + _HEADER_HEAD.size > len(view):
            raise WireError("record packet truncated in its headers")
        name_len, value_len = _HEADER_HEAD.unpack_from(view, at)
        name, at = _take(view, at + _HEADER_HEAD.size, name_len)
        value, at = _take(view, at, value_len)
        headers.append((_text(name), value))
    return OutboundRecord(topic=_text(topic), key=key, value=bytes(view[at:]), headers=headers)


def encode_message(kind: bytes, body: dict[str, Any]) -> bytes:
    return kind + json.dumps(body, separators=(",", ":")).encode()


def decode_message(packet: bytes) -> tuple[bytes, dict[str, Any]]:
    """(kind, JSON body) of a control packet (request, ready, stats)."""
    kind = packet[:1]
    if kind not in (REQUEST, READY, STATS):
        raise WireError(f"unknown packet kind {kind!r}")
    try:
        body = json.loads(packet[1:])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"control packet is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError("control packet is not a JSON object")
    if kind == REQUEST and (body.get("op") not in OPS or not isinstance(body.get("id"), int)
                            or not isinstance(body.get("timeout", 0), int | float)):
        raise WireError("request names no known op, or no integer id")
    return kind, body


def _take(view: memoryview, at: int, length: int) -> tuple[bytes, int]:
    end = at + length
    if end > len(view):
        raise WireError("record packet shorter than its lengths say")
    return bytes(view[at:end]), end


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise WireError("topic or header name is not UTF-8") from None
