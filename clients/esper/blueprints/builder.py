"""Build a seed ``nn.Module`` from a BlueprintSpec for one slot.

The seed convention: **a seed module computes a delta.** Kasmina adds the seed's output to
the host activation, ``output = host + alpha * seed(host)``, so

* residual blueprints are expressed as the branch only (an MLP block is ``fc2(gelu(fc1(x)))``,
  not ``x + ...``);
* function-preserving blueprints return exactly 0 at initialisation (a zero-initialised last
  projection or a zero gate), so germinating them leaves the model's output unchanged;
* multiplicative adapters are written as deltas: IA3 ``x * scale`` becomes
  ``x * (scale - 1)``, i.e. a CHANNEL_SCALE initialised to 0; norm blueprints are
  ``gate * norm(x)`` with a zero-initialised gate.

The seed maps the slot activation to a tensor of the same shape, in the slot's layout:
FEATURES (B, C), SEQUENCE (B, T, C), CONV1D (B, C, L), CONV2D (B, C, H, W).
Its parameters live under ``ops.<node id>.<param>``, in the graph's topological order,
so state_dicts are stable across builds.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from esper.blueprints.graph import INPUT_ID, ResolvedGraph, resolve_for_shape
from esper.blueprints.ops import make_op
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common


class SeedModule(nn.Module):
    """A blueprint graph as a module: ``forward(x)`` returns the seed's delta for ``x``."""

    def __init__(self, graph: ResolvedGraph, kind: int, blueprint_ref: str) -> None:
        super().__init__()
        self.blueprint_ref = blueprint_ref
        self.slot_kind = kind
        self.channels = graph.channels
        self.ops = nn.ModuleDict({node.id: make_op(node, kind) for node in graph.nodes})
        self._plan = tuple((node.id, node.inputs) for node in graph.nodes)
        self._output = graph.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {INPUT_ID: x}
        for node_id, inputs in self._plan:
            values[node_id] = self.ops[node_id](*(values[s] for s in inputs))
        return values[self._output]

    def input_readers(self) -> list[str]:
        """The ids of the nodes that read the seed's input."""
        return [node_id for node_id, inputs in self._plan if INPUT_ID in inputs]

    def extra_repr(self) -> str:
        return f"blueprint={self.blueprint_ref}, slot={common.SlotKind.Name(self.slot_kind)}, C={self.channels}"


def build_seed(spec: bp.BlueprintSpec, shape: common.SlotShape, *,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               seed: int | None = None) -> SeedModule:
    """Validate ``spec`` for ``shape`` and build its seed module on ``device``/``dtype``.

    Raises BlueprintError (naming the field) before allocating anything when the spec is
    invalid, does not support the slot kind, or is too large. Initial weights come from
    torch's global RNG, or, when ``seed`` is given, from a private RNG seeded with it
    (built on CPU then moved, so the weights are the same on every device).
    """
    graph = resolve_for_shape(spec, shape)
    ref = f"{spec.name}@{spec.version}"
    if seed is None:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            module = SeedModule(graph, shape.kind, ref)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = SeedModule(graph, shape.kind, ref)
        module = module.to(device=device) if device is not None else module
    if dtype is not None:
        module = module.to(dtype=dtype)
    return module


# Sequence/spatial size used for example inputs when the slot shape leaves it 0: small,
# but > 1 so token/space mixing ops (attention, pooling, 3x3 convs) are exercised.
DEFAULT_EXAMPLE_EXTENT = 4


def example_input(shape: common.SlotShape, *, batch: int = 2, device=None, dtype=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A random activation in the slot's layout (for validation, tests and benchmarks)."""
    c, kind = shape.channels, shape.kind

    def extent(v: int) -> int:
        return v or DEFAULT_EXAMPLE_EXTENT

    dims = {
        common.SLOT_KIND_FEATURES: (batch, c),
        common.SLOT_KIND_SEQUENCE: (batch, extent(shape.length), c),
        common.SLOT_KIND_CONV1D: (batch, c, extent(shape.length)),
        common.SLOT_KIND_CONV2D: (batch, c, extent(shape.height), extent(shape.width)),
    }[kind]
    x = torch.randn(dims, generator=generator, dtype=torch.float32)
    return x.to(device=device, dtype=dtype or torch.float32)
