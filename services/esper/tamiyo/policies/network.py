"""The learned policy's network: GCN layers over the host graph, four heads.

K MC-dropout passes are one batched forward: node features (K, N, F) share one graph. The
GCN propagation is GCNConv's (normalize=False, weights precomputed by
`features.encode_graph`), done as one sparse-CSR product over all K passes at once; a unit
test checks it equals `GCNConv.forward`. MC-dropout masks come from `torch.rand` with the
caller's generator (much cheaper on CPU than bernoulli_, and replayable).

`PolicyNet.infer` decides for several graphs at once, torch-geometric's way of batching
graphs: their nodes stacked into one disjoint graph (a block-diagonal adjacency,
`block_diagonal`), so the graph layers run once for the whole batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv

from esper.tamiyo.policies.features import GLOBAL_FEATURES, NODE_FEATURES
from esper.tamiyo.policies.mask import ACTIONS, SLOT_ACTIONS


@dataclass(frozen=True)
class NetworkShape:
    """Architecture hyper-parameters, saved with the weights."""

    node_features: int = NODE_FEATURES
    global_features: int = GLOBAL_FEATURES
    vocabulary: int = 0
    # Small on purpose: inference must stay within a few ms on CPU for 100-node graphs.
    hidden: int = 32
    layers: int = 2
    # Dropout rate used in training and for MC-dropout uncertainty at inference.
    dropout: float = 0.1

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def propagate(conv: GCNConv, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
    """GCNConv(normalize=False) on (K, N, H) features with a sparse (N, N) adjacency."""
    k, n, _ = h.shape
    z = conv.lin(h)
    out_dim = z.shape[-1]
    flat = z.permute(1, 0, 2).reshape(n, k * out_dim)
    mixed = (adjacency @ flat).reshape(n, k, out_dim).permute(1, 0, 2)
    return mixed + conv.bias if conv.bias is not None else mixed


# Rows per tile of a batch: BLAS computes a product's rows in tiles, and a row's rounding
# depends on where the tiles fall (a last partial tile, a product of 1-3 rows, takes other
# kernels; measured). Every graph's rows start at a multiple of this and fill whole tiles
# (zero rows padding them), alone or in a batch, so a graph's outputs never depend on what
# else is in its batch. 16 is a multiple of the tile heights of common x86 kernels.
ROW_TILE = 16


def _tiled(blocks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The blocks' rows stacked, each block padded with zero rows to a multiple of
    ROW_TILE; returns the stack and each block's first row."""
    parts, starts, row = [], [], 0
    for block in blocks:
        starts.append(row)
        extra = (-block.shape[0]) % ROW_TILE
        parts.append(torch.cat([block, block.new_zeros(extra, *block.shape[1:])]) if extra else block)
        row += block.shape[0] + extra
    return torch.cat(parts), starts


def block_diagonal(adjacencies: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sparse CSR (N, N) adjacencies as one disjoint graph, torch-geometric's way of
    batching graphs: graph i's nodes follow graph i-1's (padded, like `_tiled`, with
    isolated nodes) and no edge crosses graphs. Each row keeps its entries in their order,
    so a node's aggregation is the same sum as in its own graph. Built from the cached CSR
    parts: torch_geometric's Batch.from_data_list and a COO->CSR conversion cost more than
    the forward itself."""
    crows, cols, values = [], [], []
    nodes = edges = 0
    for adjacency in adjacencies:
        n, crow = adjacency.shape[0], adjacency.crow_indices()
        crows.append(crow[:-1] + edges)
        edges += int(crow[-1])
        extra = (-n) % ROW_TILE
        if extra:  # the padding nodes' rows are empty
            crows.append(torch.full((extra,), edges, dtype=crow.dtype))
        cols.append(adjacency.col_indices() + nodes)
        values.append(adjacency.values())
        nodes += n + extra
    crows.append(torch.tensor([edges], dtype=crows[0].dtype))
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.cat(crows), torch.cat(cols), torch.cat(values), (nodes, nodes))


class PolicyNet(nn.Module):
    def __init__(self, shape: NetworkShape) -> None:
        super().__init__()
        h = shape.hidden
        self.shape = shape
        self.node_in = nn.Linear(shape.node_features, h)
        self.convs = nn.ModuleList(GCNConv(h, h, normalize=False) for _ in range(shape.layers))
        self.global_in = nn.Linear(shape.global_features, h)
        self.action_head = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, len(ACTIONS)))
        # Slot logits (one per slot action) and blueprint logits per node, in one layer.
        self.node_head = nn.Linear(2 * h, SLOT_ACTIONS + shape.vocabulary)
        self.value_head = nn.Linear(2 * h, 1)

    def _dropout(self, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        p = self.shape.dropout
        if self.training:
            return F.dropout(t, p, True)
        if generator is None or p == 0:
            return t
        keep = torch.rand(t.shape, generator=generator) >= p
        return t * keep * (1.0 / (1.0 - p))

    def forward(
        self, x: torch.Tensor, adjacency: torch.Tensor, g: torch.Tensor,
        generator: torch.Generator | None = None, passes: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, F), g (B, G) -> action logits (B', A), slot logits (B', N, 4), blueprint
        logits (B', N, V), value (B',). A generator turns on MC-dropout outside training:
        the (deterministic) graph layers run once, then `passes` dropout samples of the
        embeddings go through the heads together, so B' = B * passes."""
        h = F.relu(self.node_in(x))
        for conv in self.convs:
            h = h + F.relu(propagate(conv, h, adjacency))
        c = h.mean(dim=1) + F.relu(self.global_in(g))  # (B, H)
        if generator is not None and passes > 1 and not self.training:
            h = h.repeat_interleave(passes, dim=0)
            c = c.repeat_interleave(passes, dim=0)
        h, c = self._dropout(h, generator), self._dropout(c, generator)
        pooled = torch.cat([c, h.max(dim=1).values], dim=-1)
        per_node = torch.cat([h, c.unsqueeze(1).expand_as(h)], dim=-1)
        node_out = self.node_head(per_node)
        return (
            self.action_head(pooled),
            node_out[..., :SLOT_ACTIONS],
            node_out[..., SLOT_ACTIONS : SLOT_ACTIONS + self.shape.vocabulary],
            self.value_head(pooled).squeeze(-1),
        )

    def dropout_keeps(
        self, sizes: Sequence[int], generator: torch.Generator | None, passes: int = 1,
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """A batch's MC-dropout masks for `infer` (None: no dropout), graph by graph the
        node mask (K, N, H) then the context's (K, H): the draws `forward` makes for each
        graph alone, in order, as factors (0 or the 1/(1-p) rescale: x * keep * scale is
        x * factor to the bit). Drawn apart from `infer` so that only the draws need to be
        serialised between threads, not the forwards."""
        p = self.shape.dropout
        if generator is None or p == 0:
            return None
        k, hidden, scale = max(1, passes), self.shape.hidden, 1.0 / (1.0 - p)

        def factors(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.where(torch.rand(shape, generator=generator) >= p, scale, 0.0)
        return [(factors((k, n, hidden)), factors((k, hidden))) for n in sizes]

    def infer(
        self, graphs: Sequence[tuple[torch.Tensor, torch.Tensor]], g: torch.Tensor,
        keeps: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`forward` for a batch of graphs outside training, without the value head (no
        decision reads it): `graphs` are (node features (N, F), adjacency (N, N) CSR) each,
        g (B, G), `keeps` their `dropout_keeps` (K passes each). The graph layers run once
        over all graphs as one disjoint graph and the heads once over all passes; a graph's
        outputs are exactly those it gets alone with the same masks (see ROW_TILE). Returns
        per graph (action logits (K, A), slot logits (K, N, 4), blueprint logits (K, N, V))."""
        k = 1 if keeps is None else keeps[0][1].shape[0]
        x, starts = _tiled([features for features, _ in graphs])
        adjacency = block_diagonal([a for _, a in graphs])
        h = F.relu(self.node_in(x))
        for conv in self.convs:
            mixed = adjacency @ conv.lin(h)
            h = h + F.relu(mixed + conv.bias if conv.bias is not None else mixed)
        tiled_g, g_rows = _tiled(list(g.split(1)))
        context = F.relu(self.global_in(tiled_g))[g_rows]  # (B, H)
        pooled, per_node, per_context = [], [], []
        for i, ((features, _), start) in enumerate(zip(graphs, starts)):
            nodes = h[start : start + features.shape[0]].unsqueeze(0)  # (1, N, H)
            c = nodes.mean(dim=1) + context[i : i + 1]
            if k > 1:
                nodes, c = nodes.repeat_interleave(k, dim=0), c.repeat_interleave(k, dim=0)
            if keeps is not None:
                nodes, c = nodes * keeps[i][0], c * keeps[i][1]
            pooled.append(torch.cat([c, nodes.max(dim=1).values], dim=-1))
            per_node.append(nodes.flatten(0, 1))
            per_context.append(c)
        pooled_rows, action_starts = _tiled(pooled)
        actions = self.action_head(pooled_rows)
        # The node head on [node, context] is W_node . node + (W_context . context + b): the
        # (K x N, 2H) concatenation `forward` builds is never made.
        hidden = self.shape.hidden
        weight = self.node_head.weight
        node_rows, node_starts = _tiled(per_node)
        context_rows, context_starts = _tiled(per_context)
        node_part = F.linear(node_rows, weight[:, :hidden])
        context_part = F.linear(context_rows, weight[:, hidden:], self.node_head.bias)
        out = []
        for (features, _), a, r, c in zip(graphs, action_starts, node_starts, context_starts):
            n = features.shape[0]
            block = node_part[r : r + k * n].reshape(k, n, -1) + context_part[c : c + k].unsqueeze(1)
            out.append((actions[a : a + k], block[..., :SLOT_ACTIONS],
                        block[..., SLOT_ACTIONS : SLOT_ACTIONS + self.shape.vocabulary]))
        return out
