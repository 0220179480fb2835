"""Framings of raw Kafka record values in a byte stream, as tools that dump topics write them
(Debian's kcat with `-f '%S:%s\\n'`, or one base64 value per line): read by `esper oona
decode` and by Simic's episode reader for topic dumps."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import BinaryIO

# A kcat length prefix longer than this many digits is not a length (corrupt input).
MAX_LENGTH_DIGITS = 10


class FramingError(ValueError):
    """The stream does not follow the chosen framing."""


def read_kcat_frames(stream: BinaryIO) -> Iterator[bytes]:
    """Values framed as `<length>:<bytes>[\\n]` (kcat -f '%S:%s\\n')."""
    while True:
        digits = b""
        while True:
            ch = stream.read(1)
            if not ch:
                if digits.strip():
                    raise FramingError("input ended inside a length prefix")
                return
            if ch == b":":
                break
            if ch in b"\r\n" and not digits:
                continue  # the optional newline after a value
            digits += ch
            if len(digits) > MAX_LENGTH_DIGITS:
                raise FramingError(f"bad length prefix {digits[:20]!r}")
        try:
            length = int(digits)
        except ValueError:
            raise FramingError(f"bad length prefix {digits[:20]!r}") from None
        if length < 0:
            continue  # a null value (tombstone)
        value = stream.read(length)
        if len(value) != length:
            raise FramingError(f"input ended {length - len(value)} bytes into a value")
        yield value


def read_base64_lines(stream: BinaryIO) -> Iterator[bytes]:
    """One base64 value per line."""
    for number, line in enumerate(stream, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            yield base64.b64decode(line, validate=True)
        except binascii.Error:
            raise FramingError(f"line {number} is not base64") from None
