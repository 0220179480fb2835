"""Reading an OpNode's typed attributes against its schema, at a concrete slot width C."""

from __future__ import annotations

import math

from esper.blueprints.dims import eval_dim
from esper.blueprints.errors import BlueprintError
from esper.blueprints.schema import BOOL, DIM, FLOAT, INT, STR, AttrSpec, OpSchema, op_name

# Largest value any dimension may take (features, channels, hidden widths): a seed wider than
# this is certainly a mistake or an attack, and refusing it here means nothing is allocated.
MAX_DIM = 65536


def read_attrs(node, schema: OpSchema, c: int, path: str) -> dict[str, object]:
    """The node's attributes as Python values (defaults filled in); BlueprintError naming
    ``path.attrs.<name>`` for unknown, missing, mistyped or out-of-range attributes."""
    for name in sorted(node.attrs):
        if name not in schema.attrs:
            known = ", ".join(sorted(schema.attrs)) or "none"
            raise BlueprintError(f"{path}.attrs.{name}",
                                 f"unknown attribute for {op_name(node.op)} (known: {known})")
    values: dict[str, object] = {}
    for name, spec in schema.attrs.items():
        field = f"{path}.attrs.{name}"
        if name not in node.attrs:
            if spec.required:
                raise BlueprintError(field, f"required by {op_name(node.op)}")
            values[name] = spec.default
        else:
            values[name] = _typed(node.attrs[name], spec, c, field, op_name(node.op))
    return values


def _typed(av, spec: AttrSpec, c: int, field: str, op: str) -> object:
    which = av.WhichOneof("value")
    if which is None:
        raise BlueprintError(field, "no value set")
    wrong = BlueprintError(field, f"{op} expects {_describe(spec.kind)}, got {which}")
    if spec.kind == DIM:
        if which == "int_value":
            value = av.int_value
        elif which == "dim_expr":
            try:
                value = eval_dim(av.dim_expr, c)
            except ValueError as exc:
                raise BlueprintError(field, str(exc)) from None
        else:
            raise wrong
        return _bounded_int(value, spec, field, c, MAX_DIM)
    if spec.kind == INT:
        if which != "int_value":
            raise wrong
        return _bounded_int(av.int_value, spec, field, c, spec.high)
    if spec.kind == FLOAT:
        if which not in ("float_value", "int_value"):
            raise wrong
        return _bounded_float(float(getattr(av, which)), spec, field)
    if spec.kind == BOOL:
        if which != "bool_value":
            raise wrong
        return av.bool_value
    if spec.kind == STR:
        if which != "string_value":
            raise wrong
        if av.string_value not in spec.choices:
            raise BlueprintError(field, f"{av.string_value[:40]!r} is not one of {list(spec.choices)}")
        return av.string_value
    raise AssertionError(f"unhandled attribute kind {spec.kind}")


def _describe(kind: str) -> str:
    return {
        DIM: "an integer or a dimension expression (int_value or dim_expr)",
        INT: "an integer (int_value)",
        FLOAT: "a number (float_value)",
        BOOL: "a boolean (bool_value)",
        STR: "a string (string_value)",
    }[kind]


def _bounded_int(value: int, spec: AttrSpec, field: str, c: int, high) -> int:
    if spec.low is not None and value < spec.low:
        raise BlueprintError(field, f"{value} is below the minimum {int(spec.low)} (at C={c})")
    if high is not None and value > high:
        raise BlueprintError(field, f"{value} exceeds the maximum {int(high)} (at C={c})")
    return int(value)


def _bounded_float(value: float, spec: AttrSpec, field: str) -> float:
    if not math.isfinite(value):
        raise BlueprintError(field, f"{value} is not finite")
    if spec.low is not None and value < spec.low:
        raise BlueprintError(field, f"{value} is below the minimum {spec.low}")
    too_high = spec.high is not None and (
        value > spec.high or (spec.high_exclusive and value >= spec.high))
    if too_high:
        bound = "below" if spec.high_exclusive else "at most"
        raise BlueprintError(field, f"{value} must be {bound} {spec.high}")
    return value
