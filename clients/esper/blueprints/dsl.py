"""Small helpers to write BlueprintSpecs in Python (the catalogue, tests, examples)."""

from __future__ import annotations

from esper.leyline.v1 import blueprint_pb2 as bp


def attr(value) -> bp.AttrValue:
    """An AttrValue from a Python value; strings containing ``C`` or an operator are
    dimension expressions, other strings are string literals."""
    if isinstance(value, bool):
        return bp.AttrValue(bool_value=value)
    if isinstance(value, int):
        return bp.AttrValue(int_value=value)
    if isinstance(value, float):
        return bp.AttrValue(float_value=value)
    if isinstance(value, Dim):
        return bp.AttrValue(dim_expr=value.expr)
    if isinstance(value, str):
        return bp.AttrValue(string_value=value)
    raise TypeError(f"no AttrValue for {type(value).__name__}")


class Dim:
    """Marks a string as a dimension expression: ``Dim("4*C")``."""

    def __init__(self, expr: str) -> None:
        self.expr = expr


def node(node_id: str, op: int, *inputs: str, **attrs) -> bp.OpNode:
    """``node("fc1", OP_TYPE_LINEAR, "input", out_features=Dim("4*C"))``."""
    n = bp.OpNode(id=node_id, op=op, inputs=list(inputs))
    for name, value in attrs.items():
        n.attrs[name].CopyFrom(attr(value))
    return n


def graph(*nodes: bp.OpNode, output: str | None = None) -> bp.OpGraph:
    """A graph whose output is the last node unless ``output`` says otherwise."""
    return bp.OpGraph(nodes=list(nodes), output=output or nodes[-1].id)
