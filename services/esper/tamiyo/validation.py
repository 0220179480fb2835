"""Checks of what clients send Tamiyo. Opens and unary requests that fail are refused
(INVALID_ARGUMENT naming the field); a bad message inside a running session is dropped
with a SessionWarning (see `esper.tamiyo.session`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.leyline.budget import budget_problem
from esper.leyline.ids import run_id_problem
from esper.leyline.v1.signals_pb2 import ModelGraph, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.runtime.errors import InvalidArgument

# Metrics that may be NaN ("not evaluated yet") but never infinite.
NAN_ALLOWED_METRICS = frozenset({"val_loss", "best_val_loss", "val_accuracy"})


class InvalidInput(InvalidArgument, ValueError):
    """A client input that is refused; `field` names it (INVALID_ARGUMENT, through the
    runtime's one mapping)."""


@dataclass(frozen=True)
class Limits:
    max_graph_nodes: int
    max_slots: int
    max_graph_bytes: int = 16 * 1024 * 1024


def check_run_id(field: str, run_id: str) -> None:
    """The shared rule of esper.leyline.ids (Tolaria checks the same one at attach)."""
    problem = run_id_problem(run_id)
    if problem is not None:
        raise InvalidInput(field, problem)


def check_graph(field: str, graph: ModelGraph, limits: Limits) -> None:
    size = graph.ByteSize()
    if size > limits.max_graph_bytes:  # kept per run: its bytes are bounded, not just its counts
        raise InvalidInput(field, f"{size} bytes exceed the limit {limits.max_graph_bytes}")
    if len(graph.nodes) > limits.max_graph_nodes:
        raise InvalidInput(f"{field}.nodes", f"{len(graph.nodes)} nodes exceed the limit {limits.max_graph_nodes}")
    if len(graph.edges) > 16 * limits.max_graph_nodes:
        raise InvalidInput(f"{field}.edges", f"{len(graph.edges)} edges exceed the limit")
    if len(graph.slots) > limits.max_slots:
        raise InvalidInput(f"{field}.slots", f"{len(graph.slots)} slots exceed the limit {limits.max_slots}")
    node_ids = set()
    for i, node in enumerate(graph.nodes):
        if not node.node_id or node.node_id in node_ids:
            raise InvalidInput(f"{field}.nodes[{i}].node_id", f"{node.node_id!r} is empty or repeated")
        node_ids.add(node.node_id)
    slot_ids = set()
    for i, slot in enumerate(graph.slots):
        if not slot.slot_id or slot.slot_id in slot_ids:
            raise InvalidInput(f"{field}.slots[{i}].slot_id", f"{slot.slot_id!r} is empty or repeated")
        if slot.node_id not in node_ids:
            raise InvalidInput(f"{field}.slots[{i}].node_id", f"{slot.node_id!r} is not a node of the graph")
        slot_ids.add(slot.slot_id)
    for i, edge in enumerate(graph.edges):
        if edge.source not in node_ids or edge.target not in node_ids:
            raise InvalidInput(f"{field}.edges[{i}]", f"{edge.source!r} -> {edge.target!r} names an unknown node")


def check_budget(field: str, budget: ResourceBudget) -> None:
    """The shared rule of esper.leyline.budget (Tolaria checks the same one at attach)."""
    problem = budget_problem(budget)
    if problem is not None:
        raise InvalidInput(f"{field}.{problem[0]}", problem[1])


def snapshot_problem(snapshot: TrainingSnapshot, limits: Limits) -> tuple[str, str] | None:
    """(warning code, detail naming the field) when a snapshot must be dropped, else None."""
    if len(snapshot.layers) > limits.max_graph_nodes + limits.max_slots:
        return "oversized", f"snapshot.layers: {len(snapshot.layers)} entries exceed the limit"
    if len(snapshot.seeds) > limits.max_slots:
        return "oversized", f"snapshot.seeds: {len(snapshot.seeds)} entries exceed the limit {limits.max_slots}"
    for name, value in snapshot.metrics.ListFields():
        nan_ok = name.name in NAN_ALLOWED_METRICS
        if isinstance(value, float) and not math.isfinite(value) and not (math.isnan(value) and nan_ok):
            return "non_finite", f"snapshot.metrics.{name.name} is {value}"
    for i, layer in enumerate(snapshot.layers):
        for name, value in layer.ListFields():
            if isinstance(value, float) and not math.isfinite(value):
                return "non_finite", f"snapshot.layers[{i}].{name.name} is {value}"
    if snapshot.HasField("stream"):
        return _stream_problem(snapshot.stream)
    return None


def _stream_problem(stream) -> tuple[str, str] | None:
    """A residual stream no widening could have produced (a policy would widen from it)."""
    if not stream.width or not stream.declared_width or not stream.feature_multiple:
        return "invalid_stream", "snapshot.stream: width, declared_width and feature_multiple must be > 0"
    if not stream.declared_width <= stream.width <= stream.max_width:
        return "invalid_stream", (f"snapshot.stream.width {stream.width} is outside "
                                  f"[declared_width {stream.declared_width}, max_width {stream.max_width}]")
    if (stream.width - stream.declared_width) % stream.feature_multiple:
        return "invalid_stream", (f"snapshot.stream.width {stream.width} is not declared_width plus a "
                                  f"multiple of feature_multiple {stream.feature_multiple}")
    return None
