"""Tensors for the learned policy: a static encoding of the ModelGraph (built once per
graph and cached) and per-snapshot node and global features.

Node features = static (op type one-hot, log dims, log params, relative depth, has slot)
              + health (LayerHealth of the node or its slot)
              + seed (one-hot stage, alpha, log steps in stage, log params, val-loss change,
                non-finite flag, embargo flag).
Candidate features, one row per legal (slot, blueprint) germination, say what the heuristic's
ranking says of that kernel: its germination value (benefit per cost, raised where the slot
is unhealthy: the heuristic's choice of slot and kernel) relative to the best of every legal
germination, whether it is that best, its benefit per cost relative to the slot's best, and
its forward FLOPs as a share of the model's. Heads that only read node embeddings learn which
slot and blueprint the episodes' task rewarded, not why, and on another task's graph they
pick by embeddings they never saw (on the Fashion-MNIST CNN: the second conv first, where
the heuristic grows the first, and so a cheaper block on both).
Global features come from TrainingMetrics, the history and the budget, and say whether the
heuristic the policy is given sees a growth signal now (its plateau, slowdown and
first-epoch rules, at its thresholds: the policy learns from episodes when a signal is
worth acting on, and the signal carries over to tasks whose epochs differ). The losses enter
as ratios (train to validation, validation to the run's first and to its best), never as
their values: a policy trained on one task's episodes then reads another task's run (a
character model's loss of 2.3, a digits model's of 0.2) on the same scale. Every value is
squashed to a bounded range and NaN/Inf become 0, so hostile snapshots cannot poison the net.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from esper.leyline.lifecycle import LIVE_STAGES
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import LayerHealth, ModelGraph
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy import budget as budgeting
from esper.policy.context import PolicyContext
from esper.policy.heuristic import (
    HEALTH_WEIGHT,
    HeuristicPolicy,
    flops_share,
)
from esper.policy.plateau import is_plateau, pace

# Bumped whenever the layout below changes; saved with the weights and checked on load.
# @2: the global pace feature; @3: losses as ratios; @4: the heuristic's growth signal;
# @5: the candidate features of each legal germination.
FEATURE_SCHEMA = "tamiyo-features@5"

# Op families recognised by substring of GraphNode.op_type (lower-cased); anything else is "other".
OP_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("linear", ("linear",)),
    ("conv", ("conv",)),
    ("norm", ("norm",)),
    ("attention", ("attention", "attn")),
    ("embedding", ("embedding",)),
    ("activation", ("relu", "gelu", "silu", "tanh", "sigmoid", "softmax")),
    ("pool", ("pool",)),
)
STATIC_FEATURES = len(OP_FAMILIES) + 1 + 5  # op one-hot (+other), log in/out dims, log params, depth, has slot
HEALTH_FEATURES = 10
STAGES = len(SeedStage.values())  # index 0 (UNSPECIFIED) doubles as "no seed"
SEED_FEATURES = STAGES + 6
NODE_FEATURES = STATIC_FEATURES + HEALTH_FEATURES + SEED_FEATURES
GLOBAL_FEATURES = 11
# Per legal germination: legal (1), log of its germination value over the best of all,
# "is that best", log of its benefit per cost over its slot's best, log1p of its FLOPs share
# of the model. Illegal ones are all 0.
CANDIDATE_FEATURES = 5
LEGAL_FEATURE = 0
# Where the pace and the growth-signal features sit in the global row.
PACE_FEATURE, SIGNAL_FEATURE = 9, 10
# The pace feature compares one-epoch gains of the best validation loss (the window of the
# local heuristic's slowdown rule), whatever thresholds the policy's heuristic has.
PACE_WINDOW = 1

# Squashing scales: log1p of a count divided by these lands near [0, 1] for real models.
LOG_DIM_SCALE = 10.0  # widths up to ~20k
LOG_PARAMS_SCALE = 20.0  # parameter counts up to ~5e8
LOG_STEPS_SCALE = 10.0  # up to ~20k steps in a stage
FEATURE_CLIP = 10.0  # no feature may exceed this magnitude


def _safe(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


def _op_family(op_type: str) -> int:
    low = op_type.lower()
    for i, (_, keys) in enumerate(OP_FAMILIES):
        if any(k in low for k in keys):
            return i
    return len(OP_FAMILIES)


@dataclass(frozen=True)
class GraphEncoding:
    """What never changes during a run: node order, GCN-normalised edges, static features."""

    node_ids: tuple[str, ...]
    node_index: dict[str, int]
    slot_node: dict[str, int]  # slot id -> node index (one slot per node)
    slot_nodes: np.ndarray  # slot_node's node indices, for masks that set every slot's column at once
    edge_index: torch.Tensor  # (2, E) with self-loops, both directions
    edge_weight: torch.Tensor  # (E,) symmetric GCN normalisation
    adjacency: torch.Tensor  # (N, N) sparse CSR of the same weights, rows = targets
    static: np.ndarray  # (N, STATIC_FEATURES)

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)


def encode_graph(graph: ModelGraph) -> GraphEncoding:
    """The static encoding; duplicate node ids keep the first, edges to unknown nodes and
    slots on unknown nodes are dropped."""
    index: dict[str, int] = {}
    nodes = []
    for node in graph.nodes:
        if node.node_id not in index:
            index[node.node_id] = len(nodes)
            nodes.append(node)
    n = len(nodes)
    static = np.zeros((n, STATIC_FEATURES), dtype=np.float32)
    max_depth = max((node.depth for node in nodes), default=0) or 1
    for i, node in enumerate(nodes):
        static[i, _op_family(node.op_type)] = 1.0
        base = len(OP_FAMILIES) + 1
        static[i, base] = math.log1p(node.in_dim) / LOG_DIM_SCALE
        static[i, base + 1] = math.log1p(node.out_dim) / LOG_DIM_SCALE
        static[i, base + 2] = math.log1p(node.params) / LOG_PARAMS_SCALE
        static[i, base + 3] = min(node.depth / max_depth, 1.0)
        static[i, base + 4] = 1.0 if node.slot_id else 0.0
    slot_node: dict[str, int] = {}
    for slot in graph.slots:  # one slot per node is visible to the net; the first wins
        if slot.node_id in index and index[slot.node_id] not in slot_node.values():
            slot_node[slot.slot_id] = index[slot.node_id]
    pairs = {(index[e.source], index[e.target]) for e in graph.edges if e.source in index and e.target in index}
    edge_index, edge_weight = _normalised_edges(pairs, n)
    coo = torch.sparse_coo_tensor(edge_index.flip(0), edge_weight, (n, n), check_invariants=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is stable
        warnings.simplefilter("ignore", UserWarning)
        adjacency = coo.coalesce().to_sparse_csr()
    ids = tuple(node.node_id for node in nodes)
    slot_nodes = np.fromiter(slot_node.values(), dtype=np.intp, count=len(slot_node))
    return GraphEncoding(ids, index, slot_node, slot_nodes, edge_index, edge_weight, adjacency, static)


def _normalised_edges(pairs: set[tuple[int, int]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Undirected edges plus self-loops, weighted 1/sqrt(deg_i deg_j) (Kipf & Welling)."""
    both = {(a, b) for a, b in pairs if a != b} | {(b, a) for a, b in pairs if a != b}
    both |= {(i, i) for i in range(n)}
    if not both:
        return torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    edge_index = torch.tensor(sorted(both), dtype=torch.long).t().contiguous()
    deg = torch.bincount(edge_index[1], minlength=n).float()
    inv = deg.pow(-0.5)
    return edge_index, inv[edge_index[0]] * inv[edge_index[1]]


def _health_row(h: LayerHealth) -> list[float]:
    grad = h.gradient_norm
    log_grad = math.log10(grad) / 5.0 if math.isfinite(grad) and grad > 0 else -1.0
    return [
        1.0,  # reported
        math.tanh(_safe(h.activation_mean)),
        math.log1p(max(0.0, _safe(h.activation_std))),
        _safe(h.dead_fraction),
        _safe(h.saturated_fraction),
        log_grad,
        math.log1p(max(0.0, _safe(h.gradient_variance))),
        math.tanh(_safe(h.update_ratio) * 100.0),  # typical ratios are ~1e-3
        1.0 if h.nan_count or h.inf_count else 0.0,
        math.log1p(max(0.0, _safe(h.latency_ms))),
    ]


def _bounded(a: np.ndarray) -> np.ndarray:
    """`a` with NaN and +-Inf at 0 and clipped to FEATURE_CLIP, in place: np.nan_to_num's
    result without its Python-level checks (~20 us a call). Elementwise, so a batch's
    features are bounded in one go exactly as each decision's alone."""
    bad = ~np.isfinite(a)
    if bad.any():
        a[bad] = 0.0
    return np.clip(a, -FEATURE_CLIP, FEATURE_CLIP, out=a)


def node_features(ctx: PolicyContext, enc: GraphEncoding) -> np.ndarray:
    """(N, NODE_FEATURES) for this snapshot."""
    x = np.zeros((enc.num_nodes, NODE_FEATURES), dtype=np.float32)
    _write_node_features(x, ctx, enc)
    return _bounded(x)


def batch_node_features(graphs: Sequence[tuple[PolicyContext, GraphEncoding]], starts: Sequence[int],
                        rows: int) -> np.ndarray:
    """`node_features` of several graphs in one (rows, NODE_FEATURES) array, graph i's from
    row starts[i] (a batch's layout: esper.tamiyo.policies.network.tile_starts), the other
    rows 0; bounded once for the batch."""
    x = np.zeros((rows, NODE_FEATURES), dtype=np.float32)
    for (ctx, enc), start in zip(graphs, starts):
        _write_node_features(x[start : start + enc.num_nodes], ctx, enc)
    return _bounded(x)


def _write_node_features(x: np.ndarray, ctx: PolicyContext, enc: GraphEncoding) -> None:
    """The features into `x` (N zero rows), unbounded."""
    x[:, :STATIC_FEATURES] = enc.static
    h0, s0 = STATIC_FEATURES, STATIC_FEATURES + HEALTH_FEATURES
    for h in ctx.snapshot.layers:
        i = enc.slot_node.get(h.layer_id, enc.node_index.get(h.layer_id))
        if i is not None:
            x[i, h0:s0] = _health_row(h)
    for slot_id, seed in ctx.seeds.items():
        i = enc.slot_node.get(slot_id)
        if i is None:
            continue
        stage = seed.stage if 0 <= seed.stage < STAGES else 0
        x[i, s0 + stage] = 1.0
        m = seed.metrics
        start, now = m.val_loss_at_stage_start, m.val_loss
        change = (now - start) / start if math.isfinite(start) and math.isfinite(now) and start > 0 else 0.0
        x[i, s0 + STAGES:s0 + SEED_FEATURES] = [
            _safe(seed.alpha),
            math.log1p(seed.steps_in_stage) / LOG_STEPS_SCALE,
            math.log1p(m.params) / LOG_PARAMS_SCALE,
            change,
            1.0 if m.non_finite_count else 0.0,
            1.0 if ctx.is_embargoed(slot_id) else 0.0,
        ]


def candidate_features(kernels: dict[tuple[int, int], KernelCandidate], scores: dict[tuple[int, int], float],
                       health: dict[int, float], nodes: int, vocabulary: int, model_flops: float) -> np.ndarray:
    """(N, V, CANDIDATE_FEATURES) for the legal germinations `kernels` ((node, blueprint) ->
    its kernel), 0 elsewhere. `scores`: each one's benefit per cost under the ranking of the
    heuristic the policy is given; `health`: each slot node's health score (health_score)."""
    x = np.zeros((nodes, vocabulary, CANDIDATE_FEATURES), dtype=np.float32)
    values = {(node, bp): score * (1.0 + HEALTH_WEIGHT * (1.0 - health.get(node, 1.0)))
              for (node, bp), score in scores.items()}
    best_value = max(values.values(), default=0.0)
    slot_best: dict[int, float] = {}
    for (node, _), score in scores.items():
        slot_best[node] = max(slot_best.get(node, score), score)
    for (node, blueprint), score in scores.items():
        value = values[(node, blueprint)]
        share = flops_share(kernels[(node, blueprint)].kernel.stats.flops, model_flops)
        x[node, blueprint] = [
            1.0,
            _log_ratio(value, best_value),
            1.0 if value >= best_value else 0.0,
            _log_ratio(score, slot_best[node]),
            math.log1p(share) if share is not None else 0.0,
        ]
    return _bounded(x)


def _log_ratio(value: float, best: float) -> float:
    """log(value / best) for finite positive values, -FEATURE_CLIP (far below) otherwise."""
    if not (best > 0 and math.isfinite(best) and value > 0 and math.isfinite(value)):
        return -FEATURE_CLIP
    return math.log(value / best)


def _pace(val_losses) -> float:
    """The last epoch's gain as a fraction of the fastest (esper.policy.plateau.pace), in
    [0, 1]; 1.0 (learning as fast as ever) until there is history to say otherwise."""
    now = pace(val_losses, PACE_WINDOW)
    return 1.0 if now is None else min(max(now, 0.0), 1.0)


def global_features(ctx: PolicyContext, heuristic: HeuristicPolicy) -> np.ndarray:
    """(GLOBAL_FEATURES,) from the metrics, history and budget; the plateau and the growth
    signal at `heuristic`'s thresholds."""
    return _bounded(np.array(_global_row(ctx, heuristic), dtype=np.float32))


def batch_global_features(contexts: Sequence[PolicyContext], heuristic: HeuristicPolicy) -> np.ndarray:
    """(B, GLOBAL_FEATURES): `global_features` of each context, bounded once for the batch."""
    return _bounded(np.array([_global_row(ctx, heuristic) for ctx in contexts], dtype=np.float32))


def _ratio(num: float, den: float, default: float) -> float:
    """num / den for finite positive values, clipped to [0, 4]; `default` otherwise."""
    if not (math.isfinite(num) and math.isfinite(den) and num >= 0 and den > 0):
        return default
    return min(num / den, 4.0)


def _global_row(ctx: PolicyContext, heuristic: HeuristicPolicy) -> list[float]:
    m, c = ctx.snapshot.metrics, heuristic.config
    limit = ctx.budget.max_added_params
    used = budgeting.params_used(ctx) / limit if limit else 0.0
    live_limit = ctx.capabilities.max_live_seeds
    live = sum(1 for s in ctx.seeds.values() if s.stage in LIVE_STAGES)
    lr = m.learning_rate
    losses = ctx.history.val_losses
    first = losses[0] if losses else math.nan
    return [
        _ratio(m.train_loss, m.val_loss, 1.0),  # the generalisation gap
        _ratio(m.val_loss, first, 1.0),  # how far the run has come
        _ratio(m.val_loss, m.best_val_loss, 1.0) - 1.0,  # how far above its best
        min(m.plateau_epochs, 100) / 10.0,
        1.0 if is_plateau(ctx.history.val_losses, c.plateau_patience, c.plateau_min_delta,
                          m.plateau_epochs) else 0.0,
        min(used, 1.0),
        live / live_limit if live_limit else 0.0,
        math.log10(lr) / 5.0 if math.isfinite(lr) and lr > 0 else 0.0,
        1.0 if limit and used >= 1.0 else 0.0,
        _pace(ctx.history.val_losses),
        0.0 if heuristic.growth_signal(ctx) is None else 1.0,
    ]
