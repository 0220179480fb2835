"""Validation of BlueprintMetadata: formulas parse, scores in range, strings bounded."""

from __future__ import annotations

import math

from esper.blueprints.dims import eval_dim
from esper.blueprints.errors import BlueprintError

# Bounds on free-form metadata so a catalogue entry stays a small, displayable record.
MAX_DESCRIPTION_LENGTH = 4096
MAX_TAGS = 32
MAX_TAG_LENGTH = 64


def check_metadata(md, reference_width: int) -> None:
    for name in ("params_formula", "flops_formula"):
        formula = getattr(md, name)
        if not formula:
            continue
        try:
            value = eval_dim(formula, reference_width)
        except ValueError as exc:
            raise BlueprintError(f"metadata.{name}", str(exc)) from None
        if value < 0:
            raise BlueprintError(f"metadata.{name}", f"{value} at C={reference_width} is negative")
    _check_unit_interval(md.risk_score, "metadata.risk_score")
    for name in ("expected_latency_ms", "capacity_factor", "past_accuracy_gain_estimate"):
        value = getattr(md, name)
        if not math.isfinite(value):
            raise BlueprintError(f"metadata.{name}", f"{value} is not finite")
    if md.expected_latency_ms < 0 or md.capacity_factor < 0:
        field = "expected_latency_ms" if md.expected_latency_ms < 0 else "capacity_factor"
        raise BlueprintError(f"metadata.{field}", "must not be negative")
    if len(md.description) > MAX_DESCRIPTION_LENGTH:
        raise BlueprintError("metadata.description", f"longer than {MAX_DESCRIPTION_LENGTH} chars")
    _check_strings(md.tags, "metadata.tags")
    _check_strings(md.requires_capability, "metadata.requires_capability")


def _check_unit_interval(value: float, field: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise BlueprintError(field, f"{value} is not in [0, 1]")


def _check_strings(values, field: str) -> None:
    if len(values) > MAX_TAGS:
        raise BlueprintError(field, f"{len(values)} entries exceed the limit of {MAX_TAGS}")
    for i, value in enumerate(values):
        if not value or len(value) > MAX_TAG_LENGTH:
            raise BlueprintError(f"{field}[{i}]", f"must be 1..{MAX_TAG_LENGTH} characters")
