"""The Leyline ModelGraph of a wrapped model: leaf modules as nodes in call order,
edges between consecutive ones (the data flow of sequential models; for branching
models it is the execution order), and the slots."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from esper.kasmina.shapes import is_eligible
from esper.leyline.v1.signals_pb2 import GraphEdge, GraphNode, ModelGraph, SlotInfo

if TYPE_CHECKING:
    from esper.kasmina.wrap import MorphableModel


def _dims(module: nn.Module) -> tuple[int, int]:
    for a, b in (("in_features", "out_features"), ("in_channels", "out_channels"),
                 ("embed_dim", "embed_dim"), ("num_features", "num_features"),
                 ("num_channels", "num_channels")):
        if hasattr(module, a) and hasattr(module, b):
            return int(getattr(module, a)), int(getattr(module, b))
    shape = getattr(module, "normalized_shape", None)
    if shape:
        return int(shape[-1]), int(shape[-1])
    if isinstance(module, nn.TransformerEncoderLayer):
        d = module.self_attn.embed_dim
        return d, d
    return 0, 0


def build_model_graph(model: MorphableModel) -> ModelGraph:
    by_node: dict = {}
    for slot in model.slots.values():  # a node's first slot names it (the rest stack on it)
        by_node.setdefault(slot.node_id, slot)
    graph = ModelGraph()
    order = []
    for name, module in model.host.named_modules():
        if not name:
            continue
        is_leaf = not any(True for _ in module.children())
        if not (is_leaf or is_eligible(module) or name in by_node):
            continue
        if any(name.startswith(o + ".") for o in order if o in by_node or is_eligible(
                model.host.get_submodule(o))):
            continue  # inside a block already represented by its own node
        order.append(name)
    for depth, name in enumerate(order):
        module = model.host.get_submodule(name)
        in_dim, out_dim = _dims(module)
        slot = by_node.get(name)
        graph.nodes.append(GraphNode(
            node_id=name, op_type=type(module).__name__, in_dim=in_dim, out_dim=out_dim,
            params=sum(p.numel() for p in module.parameters()),
            slot_id=slot.slot_id if slot else "", depth=depth,
        ))
    for a, b in zip(order, order[1:]):
        graph.edges.append(GraphEdge(source=a, target=b))
    for slot in model.slots.values():
        graph.slots.append(SlotInfo(slot_id=slot.slot_id, node_id=slot.node_id, shape=slot.shape))
    return graph
