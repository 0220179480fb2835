"""The learned policy's network: GCN layers over the host graph, four heads (action, node:
slot actions and blueprints, value), and a candidate head that adds what the heuristic's
ranking says of each legal germination (`features.candidate_features`) to its blueprint
logit and its slot's germinate logit.

K MC-dropout passes are one batched forward: node features (K, N, F) share one graph. The
GCN propagation is GCNConv's (normalize=False, weights precomputed by
`features.encode_graph`), done as one sparse-CSR product over all K passes at once; a unit
test checks it equals `GCNConv.forward`. `forward`'s MC-dropout masks come from `torch.rand`
with the caller's generator (much cheaper on CPU than bernoulli_, and replayable); a
policy's decisions use masks drawn once (`DropoutBank`).

`PolicyNet.infer` decides for several graphs at once, torch-geometric's way of batching
graphs: their nodes stacked into one disjoint graph (a block-diagonal adjacency,
`block_diagonal`), so the graph layers run once for the whole batch.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv

from esper.tamiyo.policies.features import (
    CANDIDATE_FEATURES,
    GLOBAL_FEATURES,
    LEGAL_FEATURE,
    NODE_FEATURES,
)
from esper.tamiyo.policies.mask import ACTIONS, GERMINATE, SLOT_ACTIONS


@dataclass(frozen=True)
class NetworkShape:
    """Architecture hyper-parameters, saved with the weights."""

    node_features: int = NODE_FEATURES
    global_features: int = GLOBAL_FEATURES
    candidate_features: int = CANDIDATE_FEATURES
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
# Node rows of a DropoutBank drawn at a time (a graph of N nodes draws ceil(N / this) blocks once).
BANK_ROWS = 128


def tile_starts(rows: Sequence[int]) -> tuple[list[int], int]:
    """Each block's first row when blocks of these row counts are stacked, each padded to a
    multiple of ROW_TILE; and the total."""
    starts, row = [], 0
    for n in rows:
        starts.append(row)
        row += n + (-n) % ROW_TILE
    return starts, row


def tile(blocks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The blocks' rows stacked, each block padded with zero rows to a multiple of
    ROW_TILE; returns the stack and each block's first row."""
    starts, total = tile_starts([block.shape[0] for block in blocks])
    out = blocks[0].new_zeros(total, *blocks[0].shape[1:])
    for block, start in zip(blocks, starts):
        out[start : start + block.shape[0]] = block
    return out, starts


# Entries (edges with self-loops) of the batch adjacencies kept, ~16 bytes each: ~32 MB. The
# sessions of one model need one batch per batch size.
BATCH_ADJACENCY_ENTRIES = 2**21


class _BatchAdjacencies:
    """`block_diagonal` of the batches seen lately, keyed by their adjacencies' identities
    in order: each is a run's cached encoding, so runs deciding together (sessions of one
    model, or one run alone) ask for the same batch again and again. An entry holds its
    adjacencies, so their ids are not reused while it is kept; least recently used out first
    once the entries pass `max_entries` (many large graphs in ever new batches)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._batches: OrderedDict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], torch.Tensor]] = OrderedDict()
        self._entries = 0
        self._lock = threading.Lock()  # decisions run on a pool of threads

    def get(self, adjacencies: Sequence[torch.Tensor]) -> torch.Tensor:
        key = tuple(map(id, adjacencies))
        with self._lock:
            kept = self._batches.get(key)
            if kept is not None:
                self._batches.move_to_end(key)
                return kept[1]
        batch = block_diagonal(adjacencies)  # outside the lock: two threads may both build it, alike
        size = batch.values().numel()
        with self._lock:
            if size <= self.max_entries and key not in self._batches:
                self._batches[key] = (tuple(adjacencies), batch)
                self._entries += size
                while self._entries > self.max_entries:
                    _, (_, dropped) = self._batches.popitem(last=False)
                    self._entries -= dropped.values().numel()
        return batch


_BATCH_ADJACENCIES = _BatchAdjacencies(BATCH_ADJACENCY_ENTRIES)


def block_diagonal(adjacencies: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sparse CSR (N, N) adjacencies as one disjoint graph, torch-geometric's way of
    batching graphs: graph i's nodes follow graph i-1's (padded, like `tile`, with
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
        # Each legal germination's candidate features add to its blueprint logit, and its
        # slot's best such term to the slot's germinate logit: one weight per feature,
        # shared by every slot and blueprint, so what the heuristic's ranking says of a
        # germination means the same on graphs and blueprints the episodes rarely showed.
        self.candidate_head = nn.Linear(shape.candidate_features, 1, bias=False)
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
        candidates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, N, F), g (B, G) -> action logits (B', A), slot logits (B', N, 4), blueprint
        logits (B', N, V), value (B',). A generator turns on MC-dropout outside training:
        the (deterministic) graph layers run once, then `passes` dropout samples of the
        embeddings go through the heads together, so B' = B * passes. `candidates`
        (B, N, V, C): the germinations' candidate features (None: the germinate and
        blueprint logits lack their terms; a forward for the value head alone)."""
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
        slots = node_out[..., :SLOT_ACTIONS]
        blueprints = node_out[..., SLOT_ACTIONS : SLOT_ACTIONS + self.shape.vocabulary]
        if candidates is not None:
            repeats = blueprints.shape[0] // candidates.shape[0]  # the MC-dropout passes
            candidates = candidates.repeat_interleave(repeats, dim=0) if repeats > 1 else candidates
            slots, blueprints = with_candidate_terms(
                slots, blueprints, self.candidate_head(candidates).squeeze(-1), candidates)
        return (
            self.action_head(pooled),
            slots,
            blueprints,
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
        self, x: torch.Tensor, adjacencies: Sequence[torch.Tensor], g: torch.Tensor,
        keeps: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[GraphOutputs]:
        """`forward` for a batch of graphs outside training, without the value head (no
        decision reads it): x is their node features as `tile` stacks them (graph i's N_i
        rows from tile_starts' i-th row: built so, they need no copy), `adjacencies` their
        (N_i, N_i) CSR adjacencies, g (B, G), `keeps` their MC-dropout factors (K passes
        each: `dropout_keeps`, or a DropoutBank's). The graph layers run once over all graphs as one disjoint graph and
        the action head once over all passes; the node head is left to each graph's
        GraphOutputs, which a decision asks for one slot action's column and one node's
        blueprints only. A graph's outputs are exactly those it gets alone with the same
        masks (see ROW_TILE: every product here is over one graph's own rows or whole tiles)."""
        k = 1 if keeps is None else keeps[0][1].shape[0]
        sizes = [adjacency.shape[0] for adjacency in adjacencies]
        starts, rows = tile_starts(sizes)
        if x.shape[0] != rows:
            raise ValueError(f"infer: {x.shape[0]} feature rows, the tiled graphs have {rows}")
        adjacency = _BATCH_ADJACENCIES.get(adjacencies)
        h = F.relu(self.node_in(x))
        for conv in self.convs:
            mixed = adjacency @ conv.lin(h)
            h = h + F.relu(mixed + conv.bias if conv.bias is not None else mixed)
        batch = len(adjacencies)
        tiled_g = g.new_zeros(batch, ROW_TILE, g.shape[1])  # each graph's row alone in its tile
        tiled_g[:, 0] = g
        context = F.relu(self.global_in(tiled_g.view(-1, g.shape[1]))).view(batch, ROW_TILE, -1)[:, 0]  # (B, H)
        # Per graph only what depends on its size (its rows' mean and max, its node masks);
        # the rest is one op for the whole batch, elementwise, so each graph's numbers are
        # those it gets alone.
        nodes = [h[start : start + n] for start, n in zip(starts, sizes)]  # (N, H) each
        c = torch.cat([rows.mean(dim=0, keepdim=True) for rows in nodes]) + context  # (B, H)
        if keeps is not None:  # broadcasting makes the K passes: (K, N, H), (B, K, H)
            nodes = [rows * keep for rows, (keep, _) in zip(nodes, keeps)]
            c = c.unsqueeze(1) * torch.stack([keep for _, keep in keeps])
        else:
            nodes, c = [rows.unsqueeze(0) for rows in nodes], c.unsqueeze(1)
        hidden, block = self.shape.hidden, k + (-k) % ROW_TILE  # each graph's K passes, tiled
        pooled = h.new_zeros(batch, block, 2 * hidden)  # [context, max over nodes] per pass
        pooled[:, :k, :hidden] = c
        pooled[:, :k, hidden:] = torch.stack([rows.amax(dim=1) for rows in nodes])
        actions = self.action_head(pooled.view(-1, 2 * hidden))
        head = (self.node_head.weight.detach(), self.node_head.bias.detach(),
                self.candidate_head.weight.detach()[0], self.shape)
        return [GraphOutputs(actions[i * block : i * block + k], rows, c[i], *head) for i, rows in enumerate(nodes)]


def slot_candidate_term(term: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(..., N): each node's best candidate term `term` (..., N, V) over its legal
    germinations (LEGAL_FEATURE of `candidates`), 0 for a node with none."""
    legal = candidates[..., LEGAL_FEATURE] > 0
    best = term.masked_fill(~legal, float("-inf")).amax(dim=-1)
    return torch.where(legal.any(dim=-1), best, torch.zeros_like(best))


def with_candidate_terms(slots: torch.Tensor, blueprints: torch.Tensor, term: torch.Tensor,
                         candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slot logits (..., N, 4) and blueprint logits (..., N, V) with the candidate terms
    `term` (..., N, V) of `candidates` added: each germination's to its blueprint's logit,
    its node's best to the node's germinate logit."""
    germinate = slots[..., GERMINATE] + slot_candidate_term(term, candidates)
    slots = torch.cat([slots[..., :GERMINATE], germinate.unsqueeze(-1), slots[..., GERMINATE + 1 :]], dim=-1)
    return slots, blueprints + term


@dataclass(frozen=True)
class GraphOutputs:
    """One graph's K passes after the shared layers. The node head on [node, context] is
    W_node . node + (W_context . context + b), computed here only for what is asked: a
    decision needs one slot action's column over the nodes and the blueprints of one node,
    not the (K x N, 4 + V) table."""

    actions: torch.Tensor  # (K, A) action logits
    nodes: torch.Tensor  # (K, N, H) node embeddings, dropout applied
    context: torch.Tensor  # (K, H) graph context, dropout applied
    weight: torch.Tensor  # the node head's, detached: no autograd outside inference_mode
    bias: torch.Tensor
    candidate_weight: torch.Tensor  # (C,) the candidate head's
    shape: NetworkShape

    def slot_logits(self, action: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """(K, N): slot action `action`'s logit of every node; `candidates` (N, V, C): the
        germinations' candidate features (germinate's logits add their best term)."""
        hidden, weight = self.shape.hidden, self.weight[action]
        per_pass = self.context @ weight[hidden:] + self.bias[action]
        logits = self.nodes @ weight[:hidden] + per_pass.unsqueeze(1)
        if candidates is None or action != GERMINATE:
            return logits
        return logits + slot_candidate_term(candidates @ self.candidate_weight, candidates)

    def blueprint_logits(self, node: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """(K, V): node `node`'s blueprint logits; `candidates` (V, C): its germinations'
        candidate features."""
        rows = slice(SLOT_ACTIONS, SLOT_ACTIONS + self.shape.vocabulary)
        hidden, weight = self.shape.hidden, self.weight[rows]
        logits = (F.linear(self.nodes[:, node], weight[:, :hidden])
                  + F.linear(self.context, weight[:, hidden:], self.bias[rows]))
        return logits if candidates is None else logits + candidates @ self.candidate_weight

    def node_logits(self, candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's slot (K, N, 4) and blueprint (K, N, V) logits, as `forward` returns
        them; `candidates` (N, V, C)."""
        hidden, weight = self.shape.hidden, self.weight
        out = (F.linear(self.nodes, weight[:, :hidden])
               + F.linear(self.context, weight[:, hidden:], self.bias).unsqueeze(1))
        slots, blueprints = out[..., :SLOT_ACTIONS], out[..., SLOT_ACTIONS : SLOT_ACTIONS + self.shape.vocabulary]
        if candidates is None:
            return slots, blueprints
        return with_candidate_terms(slots, blueprints, candidates @ self.candidate_weight, candidates)


class DropoutBank:
    """A policy's MC-dropout masks, drawn once: K factors (0, or the 1/(1-p) rescale) for the
    graph context and for every node row, the rows in blocks of BANK_ROWS, each block from its
    own stream of `seed` (numpy's SeedSequence), so an N-node graph's masks are a pure
    function of (seed, N). A decision then depends on its inputs only, never on which
    decisions this process made before it (replay holds across replicas and however sessions
    interleave), and draws nothing: the draws were the largest single cost of a decision.
    Every decision sees the same K dropout samples (common random numbers): the spread is
    still that of K thinned networks."""

    def __init__(self, passes: int, hidden: int, p: float, seed: int) -> None:
        self.passes, self.hidden, self.p, self.seed = passes, hidden, p, seed
        self.context = self._draw(0, (passes, hidden))
        self._nodes = torch.empty(passes, 0, hidden)
        self._grow = threading.Lock()

    def _draw(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream]))
        keep = rng.random(shape, dtype=np.float32) >= np.float32(self.p)
        return torch.from_numpy(np.where(keep, np.float32(1.0 / (1.0 - self.p)), np.float32(0.0)))

    def keeps(self, sizes: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`PolicyNet.infer`'s keeps for graphs of these node counts."""
        nodes = self._rows(max(sizes, default=0))
        return [(nodes[:, :n], self.context) for n in sizes]

    def _rows(self, n: int) -> torch.Tensor:
        nodes = self._nodes
        if nodes.shape[1] >= n:
            return nodes
        with self._grow:
            blocks = [self._nodes]
            for block in range(self._nodes.shape[1] // BANK_ROWS, -(-n // BANK_ROWS)):
                blocks.append(self._draw(block + 1, (self.passes, BANK_ROWS, self.hidden)))
            self._nodes = torch.cat(blocks, dim=1)
            return self._nodes
