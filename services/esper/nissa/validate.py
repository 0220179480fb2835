"""Request validation for Nissa's RPCs: pure functions raising InvalidArgument (the message
names the field)."""

from __future__ import annotations

import base64
import binascii

from esper.leyline.v1 import telemetry_pb2
from esper.oona.envelope import PAYLOAD_KINDS

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Ids are uuids or short names; anything longer is not an id of ours.
MAX_ID_LENGTH = 256
# Offsets beyond this are not a page anyone asked for (and keep OFFSET cheap to refuse).
MAX_OFFSET = 10_000_000
TOKEN_PREFIX = "o:"


class InvalidArgument(ValueError):
    """A request field is invalid; str() names the field."""


def page_size(value: int) -> int:
    return DEFAULT_PAGE_SIZE if value == 0 else min(value, MAX_PAGE_SIZE)


def encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{TOKEN_PREFIX}{offset}".encode()).decode()


def page_offset(token: str) -> int:
    """The offset a page token stands for (0 for the first page)."""
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if not text.startswith(TOKEN_PREFIX):
            raise ValueError
        offset = int(text.removeprefix(TOKEN_PREFIX))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("page_token: not a token this server issued") from None
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument("page_token: not a token this server issued")
    return offset


def next_token(offset: int, limit: int, returned: int) -> str:
    return encode_page_token(offset + limit) if returned == limit else ""


def identifier(field: str, value: str, *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidArgument(f"{field}: required")
        return value
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field}: longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgument(f"{field}: contains control characters")
    return value


def severity(field: str, value: int) -> int:
    if value not in telemetry_pb2.Severity.values():
        raise InvalidArgument(f"{field}: {value} is not a Severity")
    return value


def kinds(values: list[str]) -> frozenset[str]:
    for value in values:
        if value not in PAYLOAD_KINDS:
            raise InvalidArgument(
                f"kinds: unknown kind {value[:40]!r}; expected some of {', '.join(PAYLOAD_KINDS)}"
            )
    return frozenset(values)
