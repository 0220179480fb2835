"""Transitions as tensors for the GNN: features, safety masks and targets, grouped by graph.

The features and masks are the ones the learned policy computes at inference
(`features.node_features`, `features.global_features`, `mask.policy_mask`) from the same
PolicyContext, so what Simic trains on is exactly what GnnPolicy sees. A recorded action the
rebuilt mask forbids (or that the vocabulary cannot express) is dropped from the targets and
counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from esper.policy.context import graph_digest
from esper.policy.heuristic import HeuristicConfig, HeuristicPolicy
from esper.tamiyo.policies.features import (
    GraphEncoding,
    encode_graph,
    global_features,
    node_features,
)
from esper.tamiyo.policies.mask import policy_mask
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary
from esper.tamiyo.simic.actions import indices, is_legal
from esper.tamiyo.simic.dataset import State, Transition

# policy_version prefix of the decisions behaviour cloning imitates.
HEURISTIC_PREFIX = "heuristic@"


@dataclass
class GraphBatch:
    """All usable transitions of one model graph, as stacked tensors."""

    encoding: GraphEncoding
    x: torch.Tensor  # (B, N, F) node features of the state
    g: torch.Tensor  # (B, G)
    next_x: torch.Tensor  # (B, N, F); zeros where done
    next_g: torch.Tensor
    action_mask: torch.Tensor  # (B, A) bool
    slot_mask: torch.Tensor  # (B, 4, N) bool
    blueprint_mask: torch.Tensor  # (B, N, V) bool
    candidates: torch.Tensor  # (B, N, V, C) the legal germinations' candidate features
    action: torch.Tensor  # (B,) long
    node: torch.Tensor  # (B,) long, -1 for wait
    blueprint: torch.Tensor  # (B,) long, -1 unless germinate
    reward: torch.Tensor  # (B,)
    done: torch.Tensor  # (B,) float
    imitate: torch.Tensor  # (B,) bool: the heuristic's own decision (behaviour cloning target)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def take(self, idx: torch.Tensor) -> GraphBatch:
        fields = {k: getattr(self, k)[idx] for k in (
            "x", "g", "next_x", "next_g", "action_mask", "slot_mask", "blueprint_mask", "candidates", "action", "node",
            "blueprint", "reward", "done", "imitate")}
        return GraphBatch(self.encoding, **fields)


@dataclass
class TensorSet:
    batches: list[GraphBatch]
    dropped_illegal: int = 0  # recorded actions the rebuilt safety mask forbids
    dropped_unexpressible: int = 0  # no action, unknown slot or blueprint outside the vocabulary
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)


def _features(t: Transition, state: State, enc: GraphEncoding, heuristic: HeuristicPolicy
              ) -> tuple[np.ndarray, np.ndarray]:
    ctx = t.context(state)
    return node_features(ctx, enc), global_features(ctx, heuristic)


def build_tensors(transitions: list[Transition], vocab: BlueprintVocabulary, config: HeuristicConfig) -> TensorSet:
    groups: dict[str, list[tuple]] = {}
    encodings: dict[str, GraphEncoding] = {}
    out = TensorSet([])
    heuristic = HeuristicPolicy(config)  # the growth-signal feature's rules
    for t in transitions:
        key = graph_digest(t.episode.open.graph)
        enc = encodings.get(key) or encodings.setdefault(key, encode_graph(t.episode.open.graph))
        choice = indices(t.decision, enc, vocab)
        if choice is None:
            out.dropped_unexpressible += 1
            continue
        ctx = t.context()
        mask = policy_mask(ctx, enc, vocab, heuristic)
        if not is_legal(choice, mask):
            out.dropped_illegal += 1
            continue
        x, g = _features(t, t.state, enc, heuristic)
        if t.next_state is not None:
            nx, ng = _features(t, t.next_state, enc, heuristic)
        else:
            nx, ng = np.zeros_like(x), np.zeros_like(g)
        kind = t.decision.WhichOneof("action")
        out.counts[kind] = out.counts.get(kind, 0) + 1
        groups.setdefault(key, []).append((
            x, g, nx, ng, mask.actions, mask.slots, mask.blueprints, mask.candidates, choice.action, choice.node,
            choice.blueprint, t.reward, float(t.done), t.decision.policy_version.startswith(HEURISTIC_PREFIX),
        ))
    for key, rows in groups.items():
        cols = list(zip(*rows, strict=True))
        out.batches.append(GraphBatch(
            encodings[key],
            *(torch.from_numpy(np.stack(c)).float() for c in cols[:4]),
            *(torch.from_numpy(np.stack(c)).bool() for c in cols[4:7]),
            torch.from_numpy(np.stack(cols[7])),
            *(torch.tensor(c, dtype=torch.long) for c in cols[8:11]),
            torch.tensor(cols[11], dtype=torch.float32), torch.tensor(cols[12], dtype=torch.float32),
            torch.tensor(cols[13], dtype=torch.bool),
        ))
    return out
