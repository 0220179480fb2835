"""Checks of request fields shared by the RPCs; each failure is an InvalidArgument
naming the field."""

from __future__ import annotations

import math
import re

from esper.blueprints.errors import BlueprintError
from esper.blueprints.refs import parse_ref
from esper.leyline import ids
from esper.runtime.limits import INT64_MAX
from esper.urza.errors import InvalidArgument

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Device types as torch names them ("cpu", "cuda", "mps"), optionally with an index.
DEVICE_RE = re.compile(r"^[a-z][a-z0-9_]{0,15}(:[0-9]{1,3})?$")
# Free-text fields (reasons, details) stay displayable.
MAX_REASON_LENGTH = 4096
# Ids chosen by clients (run ids, seed ids) and short labels (tags, capabilities).
MAX_ID_LENGTH = 128
MAX_LABEL_LENGTH = 64
MAX_LABELS = 32


def blueprint_ref(ref: str, field: str = "blueprint_ref") -> tuple[str, str]:
    """``name@version`` -> (name, version)."""
    if not ref:
        raise InvalidArgument(field, "is required (name@MAJOR.MINOR.PATCH)")
    try:
        return parse_ref(ref)
    except BlueprintError as exc:
        raise InvalidArgument(field, exc.message if exc.field_path == "ref" else
                              f"{exc.field_path.removeprefix('ref.')} {exc.message}") from None


def kernel_id(value: str, field: str = "kernel_id") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not ids.KERNEL_ID_PATTERN.fullmatch(value):
        raise InvalidArgument(field, f"{value[:80]!r} is not a kernel id (k- and 16 hex digits)")
    return value


def reason(value: str, field: str = "reason") -> str:
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_REASON_LENGTH} characters")
    return value


def client_id(value: str, field: str, *, required: bool) -> str:
    if required and not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_ID_LENGTH} characters")
    return value


def labels(values, field: str) -> list[str]:
    """Tags or capabilities: at most MAX_LABELS non-empty short strings."""
    if len(values) > MAX_LABELS:
        raise InvalidArgument(field, f"{len(values)} entries exceed the limit of {MAX_LABELS}")
    for i, value in enumerate(values):
        if not value or len(value) > MAX_LABEL_LENGTH:
            raise InvalidArgument(f"{field}[{i}]", f"must be 1..{MAX_LABEL_LENGTH} characters")
    return list(values)


def enum_member(value: int, wrapper, field: str, *, allow_unspecified: bool) -> int:
    """`value` must be a member of the enum (and not 0 unless allowed)."""
    if value not in wrapper.values() or (value == 0 and not allow_unspecified):
        raise InvalidArgument(field, f"{value} is not a valid {wrapper.DESCRIPTOR.name}")
    return value


def finite_non_negative(value: float, field: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(field, f"{value} must be a finite number >= 0")
    return value


def int64(value: int, field: str) -> int:
    if value > INT64_MAX:
        raise InvalidArgument(field, f"{value} is larger than {INT64_MAX}")
    return value
