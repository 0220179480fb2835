"""Validation of BlueprintSpecs: structure, typed attributes, shapes and size limits.

``validate_blueprint(spec)`` checks everything that does not depend on a slot and resolves
the graph at the reference width; ``resolve_for_shape(spec, shape)`` does the same for a
concrete slot shape (what the builder uses). Every error is a BlueprintError naming the
field, e.g. ``graph.nodes[3].attrs.out_features``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from esper.blueprints.attrs import MAX_DIM, read_attrs
from esper.blueprints.errors import BlueprintError
from esper.blueprints.metadata import check_metadata
from esper.blueprints.refs import check_name, check_version
from esper.blueprints.schema import OP_SCHEMAS, kind_name, op_name
from esper.blueprints.shapes import Act, infer
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common

# Width at which blueprints are resolved and size-checked when no slot is given (the
# reference width of the latency/memory metadata).
REFERENCE_WIDTH = 256
# Most nodes in a graph: every catalogue blueprint needs < 10; more is a generated graph.
MAX_NODES = 64
# Most parameters at the reference width: ~200 MB of fp32, far beyond any seed.
MAX_REFERENCE_PARAMS = 50_000_000
# Most parameters when building for a real slot (wider slots legitimately need more):
# ~2 GB of fp32, refused before anything is allocated.
MAX_BUILD_PARAMS = 500_000_000
# Node ids become state_dict key components: short lower-case identifiers, no dots.
NODE_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# The reserved id of the slot activation.
INPUT_ID = "input"
# Ids that would shadow nn.ModuleDict attributes when used as module names: those of its
# attributes that NODE_ID_RE admits. Spelled out rather than read from torch, so validating
# a blueprint (Urza, Tamiyo, the CLI) does not import torch; a test compares it with the
# installed torch, so an upgrade that adds attributes fails there first.
MODULE_DICT_ATTRIBUTES = frozenset({
    "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "clear",
    "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float",
    "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule", "half",
    "ipu", "items", "keys", "load_state_dict", "modules", "mtia", "named_buffers",
    "named_children", "named_modules", "named_parameters", "parameters", "pop",
    "register_backward_hook", "register_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook",
    "register_full_backward_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_",
    "set_extra_state", "set_submodule", "share_memory", "state_dict", "to", "to_empty",
    "train", "training", "type", "update", "values", "xpu", "zero_grad",
})
_RESERVED_IDS = MODULE_DICT_ATTRIBUTES | {INPUT_ID}
_SPATIAL_DIMS = {bp.OP_TYPE_CONV2D: 2, bp.OP_TYPE_CONV1D: 1}


@dataclass(frozen=True)
class ResolvedNode:
    """One node at a concrete width: typed attributes, input/output shapes and costs."""

    index: int
    id: str
    op: int
    inputs: tuple[str, ...]
    attrs: dict
    in_acts: tuple[Act, ...]
    out: Act
    params: int
    flops: int


@dataclass(frozen=True)
class ResolvedGraph:
    """A validated graph at width ``channels``, nodes in a deterministic topological order."""

    channels: int
    nodes: tuple[ResolvedNode, ...]
    output: str
    params: int
    flops: int


def validate_blueprint(spec: bp.BlueprintSpec, *, reference_width: int = REFERENCE_WIDTH,
                       max_params: int = MAX_REFERENCE_PARAMS) -> ResolvedGraph:
    """Raise BlueprintError if ``spec`` is invalid; return its graph resolved at the
    reference width."""
    order = check_structure(spec)
    return _resolve(spec, order, reference_width, max_params,
                    notional_widen_per_unit(reference_width))


def notional_widen_per_unit(channels: int) -> int:
    """What one more unit costs in a C -> C layer followed by another (a width blueprint's
    size when no slot is given)."""
    return 2 * channels + 1


def resolve_for_shape(spec: bp.BlueprintSpec, shape: common.SlotShape) -> ResolvedGraph:
    """Validate ``spec`` for a concrete slot; the builder's entry point."""
    validate_slot_shape(shape)
    order = check_structure(spec)
    if shape.kind not in spec.slot_kinds:
        kinds = ", ".join(kind_name(k) for k in spec.slot_kinds)
        raise BlueprintError("shape.kind", f"{spec.name} supports {kinds}, not {kind_name(shape.kind)}")
    resolved = _resolve(spec, order, shape.channels, MAX_BUILD_PARAMS, shape.widen_params_per_unit)
    return _causal(resolved) if shape.causal else resolved


def _causal(graph: ResolvedGraph) -> ResolvedGraph:
    """The graph with every op that mixes positions made causal: on a causal slot a seed
    that looked ahead would read the very tokens its host is trained to predict. The
    attention ops have a `causal` attribute, set here; a mean over all tokens cannot be
    made causal, so a graph with one is refused."""
    for n in graph.nodes:
        if n.op == bp.OP_TYPE_GLOBAL_AVG_POOL:
            raise BlueprintError("shape.causal", f"node {n.id!r} averages over every token, "
                                 "which would look ahead on a causal slot")
    nodes = tuple(replace(n, attrs={**n.attrs, "causal": True}) if "causal" in n.attrs else n
                  for n in graph.nodes)
    return replace(graph, nodes=nodes)


# Ops that mix a position with others along the sequence (what SlotShape.causal restricts).
POSITION_MIXING_OPS = frozenset({bp.OP_TYPE_SELF_ATTENTION, bp.OP_TYPE_GQA_ROPE,
                                 bp.OP_TYPE_GLOBAL_AVG_POOL})


def mixes_positions(spec: bp.BlueprintSpec) -> bool:
    """Whether a seed of `spec` on a sequence slot mixes positions (so whether it is built
    differently on a causal slot)."""
    return any(node.op in POSITION_MIXING_OPS for node in spec.graph.nodes)


def validate_slot_shape(shape: common.SlotShape, field: str = "shape") -> None:
    if not isinstance(shape, common.SlotShape):
        raise BlueprintError(field, f"expected a SlotShape, got {type(shape).__name__}")
    if shape.kind not in OP_SCHEMAS[bp.OP_TYPE_LINEAR].slot_kinds:
        raise BlueprintError(f"{field}.kind", f"{kind_name(shape.kind)} is not a slot kind")
    if not 1 <= shape.channels <= MAX_DIM:
        raise BlueprintError(f"{field}.channels", f"{shape.channels} is not in [1, {MAX_DIM}]")


def estimate_params(spec: bp.BlueprintSpec, channels: int, widen_per_unit: int | None = None) -> int:
    """Parameter count of the seed built at width ``channels`` (validates the spec);
    `widen_per_unit`: the slot's SlotShape.widen_params_per_unit (notional when None)."""
    per_unit = notional_widen_per_unit(channels) if widen_per_unit is None else widen_per_unit
    return _resolve(spec, check_structure(spec), channels, MAX_BUILD_PARAMS, per_unit).params


def estimate_flops(spec: bp.BlueprintSpec, channels: int, widen_per_unit: int | None = None) -> int:
    """Forward FLOPs per position at width ``channels`` (see esper.blueprints.shapes)."""
    per_unit = notional_widen_per_unit(channels) if widen_per_unit is None else widen_per_unit
    return _resolve(spec, check_structure(spec), channels, MAX_BUILD_PARAMS, per_unit).flops


def check_structure(spec: bp.BlueprintSpec) -> list[int]:
    """Width-independent checks; returns node indices in topological order."""
    if not isinstance(spec, bp.BlueprintSpec):
        raise BlueprintError("spec", f"expected a BlueprintSpec, got {type(spec).__name__}")
    check_name(spec.name)
    check_version(spec.version)
    if spec.family == bp.BLUEPRINT_FAMILY_UNSPECIFIED or spec.family not in bp.BlueprintFamily.values():
        raise BlueprintError("family", f"{spec.family} is not a blueprint family")
    _check_slot_kinds(spec)
    ids = _check_nodes(spec)
    order = _topological_order(spec.graph, ids)
    _check_output(spec.graph, ids)
    check_metadata(spec.metadata, REFERENCE_WIDTH)
    return order


def _check_slot_kinds(spec) -> None:
    if not spec.slot_kinds:
        raise BlueprintError("slot_kinds", "at least one slot kind is required")
    seen = set()
    for i, kind in enumerate(spec.slot_kinds):
        if kind == common.SLOT_KIND_UNSPECIFIED or kind not in common.SlotKind.values():
            raise BlueprintError(f"slot_kinds[{i}]", f"{kind_name(kind)} is not a slot kind")
        if kind in seen:
            raise BlueprintError(f"slot_kinds[{i}]", f"{kind_name(kind)} is listed twice")
        seen.add(kind)


def _check_nodes(spec) -> dict[str, int]:
    nodes = spec.graph.nodes
    if not nodes:
        raise BlueprintError("graph.nodes", "the graph has no nodes")
    if len(nodes) > MAX_NODES:
        raise BlueprintError("graph.nodes", f"{len(nodes)} nodes exceed the limit of {MAX_NODES}")
    ids: dict[str, int] = {}
    for i, node in enumerate(nodes):
        path = f"graph.nodes[{i}]"
        if not NODE_ID_RE.match(node.id) or node.id in _RESERVED_IDS:
            raise BlueprintError(f"{path}.id", f"{node.id[:40]!r} must match {NODE_ID_RE.pattern} "
                                 "and not be a reserved name")
        if node.id in ids:
            raise BlueprintError(f"{path}.id", f"duplicate node id {node.id!r}")
        ids[node.id] = i
    for i, node in enumerate(nodes):
        _check_node(spec, node, f"graph.nodes[{i}]", ids)
        if node.op == bp.OP_TYPE_WIDEN and len(nodes) != 1:
            raise BlueprintError(f"graph.nodes[{i}].op", "OP_TYPE_WIDEN must be the graph's only "
                                 "node (Kasmina builds the widened layers from the host's own)")
    return ids


def _check_node(spec, node, path: str, ids: dict[str, int]) -> None:
    schema = OP_SCHEMAS.get(node.op)
    if schema is None:
        raise BlueprintError(f"{path}.op", f"unknown op {op_name(node.op)}")
    n = len(node.inputs)
    if not schema.min_inputs <= n <= schema.max_inputs:
        want = (str(schema.min_inputs) if schema.min_inputs == schema.max_inputs
                else f"{schema.min_inputs}..{schema.max_inputs}")
        raise BlueprintError(f"{path}.inputs", f"{op_name(node.op)} takes {want} inputs, got {n}")
    for j, src in enumerate(node.inputs):
        if src != INPUT_ID and src not in ids:
            raise BlueprintError(f"{path}.inputs[{j}]", f"{src[:40]!r} is not a node id or 'input'")
    for kind in spec.slot_kinds:
        if kind not in schema.slot_kinds:
            allowed = ", ".join(kind_name(k) for k in schema.slot_kinds)
            raise BlueprintError(f"{path}.op", f"{op_name(node.op)} is not allowed in "
                                 f"{kind_name(kind)} slots (allowed: {allowed})")


def _topological_order(graph, ids: dict[str, int]) -> list[int]:
    """Stable Kahn order (ties broken by node position); BlueprintError naming a cycle."""
    deps = [{ids[s] for s in node.inputs if s != INPUT_ID} for node in graph.nodes]
    done: set[int] = set()
    order: list[int] = []
    while len(order) < len(deps):
        ready = [i for i in range(len(deps)) if i not in done and deps[i] <= done]
        if not ready:
            raise BlueprintError("graph.nodes", f"cycle: {_find_cycle(graph, deps, done)}")
        order.extend(ready)
        done.update(ready)
    return order


def _find_cycle(graph, deps: list[set[int]], done: set[int]) -> str:
    start = next(i for i in range(len(deps)) if i not in done)
    path, seen = [start], {start: 0}
    while True:
        nxt = min(d for d in deps[path[-1]] if d not in done)
        if nxt in seen:
            cycle = path[seen[nxt]:] + [nxt]
            return " -> ".join(graph.nodes[i].id for i in reversed(cycle))
        seen[nxt] = len(path)
        path.append(nxt)


def _check_output(graph, ids: dict[str, int]) -> None:
    if graph.output not in ids:
        raise BlueprintError("graph.output", f"{graph.output[:40]!r} is not a node id")
    live, stack = set(), [ids[graph.output]]
    while stack:
        i = stack.pop()
        if i not in live:
            live.add(i)
            stack.extend(ids[s] for s in graph.nodes[i].inputs if s != INPUT_ID)
    for i, node in enumerate(graph.nodes):
        if i not in live:
            raise BlueprintError(f"graph.nodes[{i}]", f"node {node.id!r} does not feed the output")


def _resolve(spec, order: list[int], c: int, max_params: int, widen_per_unit: int = 0) -> ResolvedGraph:
    acts: dict[str, Act] = {INPUT_ID: Act(c)}
    resolved, params, flops = [], 0, 0
    for i in order:
        node, path = spec.graph.nodes[i], f"graph.nodes[{i}]"
        attrs = read_attrs(node, OP_SCHEMAS[node.op], c, path)
        ins = tuple(acts[s] for s in node.inputs)
        cost = infer(node.op, attrs, list(ins), path, _SPATIAL_DIMS.get(node.op, 0), widen_per_unit)
        params += cost.params
        if params > max_params:
            raise BlueprintError(path, f"{op_name(node.op)} brings the parameter count to "
                                 f"{params:,} at C={c}, over the limit of {max_params:,}")
        acts[node.id] = cost.out
        flops += cost.flops
        resolved.append(ResolvedNode(i, node.id, node.op, tuple(node.inputs), attrs, ins,
                                     cost.out, cost.params, cost.flops))
    out = acts[spec.graph.output]
    if out != Act(c):
        raise BlueprintError("graph.output", f"output has width {out.channels}"
                             f"{' and is pooled' if out.pooled else ''}; a seed must return the "
                             f"slot's shape (width {c}, not pooled)")
    return ResolvedGraph(c, tuple(resolved), spec.graph.output, params, flops)
