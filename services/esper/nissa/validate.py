"""Request validation for Nissa's RPCs: pure functions raising the runtime's InvalidArgument
(the message names the field). Page sizes and tokens are the runtime's
(esper.runtime.pagination)."""

from __future__ import annotations

from esper.leyline.v1 import telemetry_pb2
from esper.oona.envelope import PAYLOAD_KINDS
from esper.runtime.errors import InvalidArgument
from esper.runtime.pagination import page_size

__all__ = ["InvalidArgument", "identifier", "kinds", "page_size", "severity"]

# Ids are uuids or short names; anything longer is not an id of ours.
MAX_ID_LENGTH = 256


def identifier(field: str, value: str, *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidArgument(field, "required")
        return value
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise InvalidArgument(field, "contains control characters")
    return value


def severity(field: str, value: int) -> int:
    if value not in telemetry_pb2.Severity.values():
        raise InvalidArgument(field, f"{value} is not a Severity")
    return value


def kinds(values: list[str]) -> frozenset[str]:
    for value in values:
        if value not in PAYLOAD_KINDS:
            raise InvalidArgument(
                "kinds", f"unknown kind {value[:40]!r}; expected some of {', '.join(PAYLOAD_KINDS)}"
            )
    return frozenset(values)
