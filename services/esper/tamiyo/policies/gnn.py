"""GnnPolicy: the learned policy. A GCN over the host graph scores actions, slots and
blueprints; K MC-dropout passes (one batched forward, the policy's fixed dropout masks:
network.DropoutBank) give mean and spread; the safety mask zeroes every illegal choice; a
low-confidence or uncertain choice falls back to the heuristic.

`decide_batch` decides for several runs with one forward over their graphs together
(esper.tamiyo.policies.network.PolicyNet.infer); each decision is exactly the one `decide`
would make for that run at that point of the batch's order.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from esper.leyline.lifecycle import next_stage
from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    AdvanceAction,
    CullAction,
    CullReason,
    FossilizeAction,
    GerminateAction,
    WaitAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedState
from esper.policy.context import PolicyContext, graph_digest
from esper.policy.decisions import Action, make_decision
from esper.policy.heuristic import HeuristicPolicy, blend_schedule
from esper.policy.safety import violation
from esper.tamiyo.policies.artifact import PolicyArtifact, load_policy
from esper.tamiyo.policies.features import (
    GraphEncoding,
    batch_global_features,
    batch_node_features,
    encode_graph,
)
from esper.tamiyo.policies.mask import ACTIONS, GERMINATE, WAIT, SafetyMask, policy_mask
from esper.tamiyo.policies.network import (
    DropoutBank,
    GraphOutputs,
    NetworkShape,
    PolicyNet,
    tile_starts,
)
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary, default_vocabulary

POLICY_NAME = "gnn"
# In the rationale of a widening of the residual stream by the heuristic's rule (the
# network has no widening action): how a reader tells it from the network's own decisions.
STREAM_RULE_MARK = "widens by the heuristic's stream rule"
# Graph encodings kept per policy instance: one per live run's graph is plenty.
GRAPH_CACHE_SIZE = 64


@dataclass(frozen=True)
class GnnConfig:
    """Inference settings of the learned policy."""

    # Stochastic passes for MC-dropout: 8 gives a usable spread estimate at low cost.
    mc_passes: int = 8
    # Below this joint probability (action x slot x blueprint) the heuristic decides instead.
    min_confidence: float = 0.35
    # Above this MC-dropout std of the chosen action's probability the heuristic decides.
    max_uncertainty: float = 0.25
    # Graphs larger than this are not encoded (bounded work per decision); the heuristic decides.
    max_nodes: int = 4096
    # Seed of the dropout masks (drawn once per policy), so decisions are reproducible (replay).
    dropout_seed: int = 0


def _masked_softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the last axis with illegal entries at exactly 0 probability (a row with
    nothing legal is all 0), in NumPy: the arrays are a few dozen numbers, where each torch
    call costs several times a NumPy one. Every op is elementwise or along the last axis, so
    a row's result is the same alone or stacked with other decisions' rows."""
    masked = np.where(mask, logits, np.float32(-np.inf))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # -inf - -inf, 0 / 0
        e = np.exp(masked - masked.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
    probs[np.isnan(probs)] = 0.0
    return probs


def _mean(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """The mean over the passes (`axis`); np.mean's Python wrapper costs more than the sum."""
    return p.sum(axis=axis) / np.float32(p.shape[axis])


def _best(p: np.ndarray, mask: np.ndarray) -> int:
    """The legal index of highest mean probability (the first on a tie)."""
    return int(np.argmax(np.where(mask, p, np.float32(-1.0))))


def _choose_actions(masks: Sequence[SafetyMask], outputs: Sequence[GraphOutputs]) -> list[tuple[int, float, float]]:
    """Each decision's action, its mean probability and MC-dropout spread, for the whole
    batch in one set of NumPy calls (per decision they cost more than the forward's share):
    the same arithmetic, element for element, as one decision's alone."""
    legal = np.array([mask.actions for mask in masks])  # (B, A); np.array: np.stack's wrapper costs more
    p_action = _masked_softmax(np.array([out.actions.numpy() for out in outputs]), legal[:, None, :])  # (B, K, A)
    mean = _mean(p_action, axis=1)  # (B, A)
    best = np.argmax(np.where(legal, mean, np.float32(-1.0)), axis=-1)  # the first on a tie
    rows = np.arange(len(outputs))
    chosen = mean[rows, best]
    deviation = p_action[rows, :, best] - chosen[:, None]  # (B, K)
    variance = _mean(deviation * deviation, axis=1)
    return [(a, p, math.sqrt(v)) for a, p, v in zip(best.tolist(), chosen.tolist(), variance.tolist())]


def _choose_slots(masks: Sequence[SafetyMask], outputs: Sequence[GraphOutputs],
                  actions: Sequence[int]) -> list[tuple[int, float] | None]:
    """Each decision's node for its slot action and the node's mean probability (None for
    wait); the decisions of graphs of one size together, in one set of NumPy calls."""
    by_size: dict[int, list[int]] = {}
    for b, a in enumerate(actions):
        if a != WAIT:
            by_size.setdefault(outputs[b].nodes.shape[1], []).append(b)
    slots: list[tuple[int, float] | None] = [None] * len(actions)
    for members in by_size.values():
        legal = np.array([masks[b].slots[actions[b]] for b in members])  # (G, N)
        logits = np.array([outputs[b].slot_logits(actions[b], torch.from_numpy(masks[b].candidates)).numpy()
                           for b in members])  # (G, K, N)
        p_slot = _mean(_masked_softmax(logits, legal[:, None, :]), axis=1)  # (G, N)
        best = np.argmax(np.where(legal, p_slot, np.float32(-1.0)), axis=-1)  # the first on a tie
        for b, node, p in zip(members, best.tolist(), p_slot[np.arange(len(members)), best].tolist()):
            slots[b] = (node, p)
    return slots


class GnnPolicy:
    """The learned policy; `heuristic` both falls back and supplies schedules and thresholds."""

    name = POLICY_NAME

    def __init__(
        self,
        artifact: PolicyArtifact | None = None,
        *,
        config: GnnConfig | None = None,
        heuristic: HeuristicPolicy | None = None,
        vocabulary: BlueprintVocabulary | None = None,
        shape: NetworkShape | None = None,
    ) -> None:
        """Serve `artifact`'s weights, or an untrained net (for tests and as Simic's start)."""
        self.config = config or GnnConfig()
        self.heuristic = heuristic or HeuristicPolicy()
        if artifact is not None:
            self.net, self.vocabulary, self._version = artifact.net, artifact.vocabulary, artifact.version
            self.artifact_path = artifact.path
        else:
            self.vocabulary = vocabulary or default_vocabulary()
            base = shape or NetworkShape()
            torch.manual_seed(self.config.dropout_seed)
            self.net = PolicyNet(NetworkShape(**{**base.as_dict(), "vocabulary": len(self.vocabulary)}))
            self._version, self.artifact_path = f"{POLICY_NAME}@untrained", ""
        self.net.eval()
        self._graphs: OrderedDict[str, GraphEncoding] = OrderedDict()
        self._dropout: DropoutBank | None = None
        # Tamiyo decides on a pool of threads: the encoding cache is shared between them.
        self._graphs_lock = threading.Lock()

    @classmethod
    def load(cls, path: str, **kwargs: object) -> GnnPolicy:
        return cls(load_policy(path), **kwargs)  # type: ignore[arg-type]

    @property
    def version(self) -> str:
        return self._version

    # -- encoding ---------------------------------------------------------------------------

    def encoding(self, ctx: PolicyContext) -> GraphEncoding:
        key = ctx.graph_digest or graph_digest(ctx.graph)
        with self._graphs_lock:
            enc = self._graphs.get(key)
            if enc is not None:
                self._graphs.move_to_end(key)
                return enc
        enc = encode_graph(ctx.graph)  # outside the lock: two threads may both encode, alike
        with self._graphs_lock:
            self._graphs[key] = enc
            while len(self._graphs) > GRAPH_CACHE_SIZE:
                self._graphs.popitem(last=False)
        return enc

    def mask(self, ctx: PolicyContext, enc: GraphEncoding) -> SafetyMask:
        return policy_mask(ctx, enc, self.vocabulary, self.heuristic)

    # -- decision ---------------------------------------------------------------------------

    def decide(self, ctx: PolicyContext) -> AdaptationDecision:
        return self.decide_batch([ctx])[0]

    def decide_batch(self, contexts: Sequence[PolicyContext]) -> list[AdaptationDecision]:
        """One decision per context, with one forward for all their graphs."""
        decisions: list[AdaptationDecision | None] = [None] * len(contexts)
        work: list[tuple[int, PolicyContext, GraphEncoding, SafetyMask]] = []
        for i, ctx in enumerate(contexts):
            widening = self._stream_widening(ctx)
            if widening is not None:
                decisions[i] = widening
                continue
            if len(ctx.graph.nodes) > self.config.max_nodes:
                decisions[i] = self._fallback(ctx, f"graph has {len(ctx.graph.nodes)} nodes > {self.config.max_nodes}")
                continue
            enc = self.encoding(ctx)
            if enc.num_nodes == 0:
                decisions[i] = self._fallback(ctx, "empty model graph")
                continue
            work.append((i, ctx, enc, self.mask(ctx, enc)))
        if work:
            outputs = self.forward_passes([(ctx, enc) for _, ctx, enc, _ in work])
            masks = [mask for *_, mask in work]
            actions = _choose_actions(masks, outputs)
            slots = _choose_slots(masks, outputs, [a for a, _, _ in actions])
            for (i, ctx, enc, mask), logits, action, slot in zip(work, outputs, actions, slots):
                decisions[i] = self._decide(ctx, enc, mask, logits, action, slot)
        return decisions  # type: ignore[return-value]  # every slot was filled above

    def _decide(self, ctx: PolicyContext, enc: GraphEncoding, mask: SafetyMask, outputs: GraphOutputs,
                action: tuple[int, float, float], slot: tuple[int, float] | None) -> AdaptationDecision:
        action_index, node, blueprint, confidence, uncertainty = self._choose(mask, outputs, *action, slot)
        if confidence < self.config.min_confidence or uncertainty > self.config.max_uncertainty:
            return self._fallback(ctx, f"low confidence {confidence:.2f} / uncertainty {uncertainty:.2f}")
        action, rationale = self._action(ctx, enc, mask, action_index, node, blueprint)
        decision = make_decision(
            ctx, action, policy_version=self.version,
            horizon_steps=self.heuristic.config.decision_horizon_steps,
            confidence=confidence, uncertainty=uncertainty,
            rationale=f"{rationale} (p={confidence:.2f}, mc-std={uncertainty:.2f})",
        )
        problem = violation(decision, ctx, *self.heuristic.limits(ctx))
        return self._fallback(ctx, f"safety check refused it: {problem}") if problem else decision

    def _stream_widening(self, ctx: PolicyContext) -> AdaptationDecision | None:
        """The heuristic's widening of the residual stream, when its rule fires: the network
        has no widening action (its actions are per slot, and Simic's episodes have none to
        learn from), so the stream grows as under the heuristic and the network grows the
        seeds on it."""
        decision = self.heuristic.stream_decision(ctx)
        if decision is not None:
            decision.rationale = f"{self.version} {STREAM_RULE_MARK}: {decision.rationale}"
        return decision

    def _fallback(self, ctx: PolicyContext, why: str) -> AdaptationDecision:
        decision = self.heuristic.decide(ctx)
        decision.rationale = f"{self.version} fell back to the heuristic ({why}): {decision.rationale}"
        return decision

    def forward_passes(self, graphs: Sequence[tuple[PolicyContext, GraphEncoding]]) -> list[GraphOutputs]:
        """K MC-dropout passes for each graph, all in one forward."""
        starts, rows = tile_starts([enc.num_nodes for _, enc in graphs])
        x = torch.from_numpy(batch_node_features(graphs, starts, rows))  # the layout infer takes
        g = torch.from_numpy(batch_global_features([ctx for ctx, _ in graphs], self.heuristic))
        bank = self._bank()
        keeps = bank.keeps([enc.num_nodes for _, enc in graphs]) if bank else None
        with torch.inference_mode():
            return self.net.infer(x, [enc.adjacency for _, enc in graphs], g, keeps)

    def _bank(self) -> DropoutBank | None:
        """The dropout masks of the net in use (Simic and tests may swap `net`); None: no
        MC-dropout (one pass, or no dropout)."""
        p, k, hidden = self.net.shape.dropout, max(1, self.config.mc_passes), self.net.shape.hidden
        if k == 1 or not p:
            return None
        bank = self._dropout
        if bank is None or (bank.passes, bank.hidden, bank.p) != (k, hidden, p):
            bank = self._dropout = DropoutBank(k, hidden, p, self.config.dropout_seed)
        return bank

    def _choose(self, mask: SafetyMask, outputs: GraphOutputs, a: int, confidence: float, spread: float,
                slot: tuple[int, float] | None) -> tuple[int, int | None, int | None, float, float]:
        """The blueprint for a germination, and the joint confidence of action `a` and `slot`
        (chosen by _choose_actions and _choose_slots)."""
        if slot is None:
            return a, None, None, confidence, spread
        node, p_node = slot
        confidence *= p_node
        if a != GERMINATE:
            return a, node, None, confidence, spread
        b_mask = mask.blueprints[node]
        logits = outputs.blueprint_logits(node, torch.from_numpy(mask.candidates[node]))
        p_bp = _mean(_masked_softmax(logits.numpy(), b_mask))
        bp = _best(p_bp, b_mask)
        return a, node, bp, confidence * float(p_bp[bp]), spread

    def _action(
        self, ctx: PolicyContext, enc: GraphEncoding, mask: SafetyMask, a: int, node: int | None,
        bp: int | None,
    ) -> tuple[Action, str]:
        name = ACTIONS[a]
        if node is None:
            notes = f"; {'; '.join(mask.notes)}" if mask.notes else ""
            return WaitAction(steps=self.heuristic.config.wait_steps), f"gnn chose wait{notes}"
        slot_id = next(s for s, i in enc.slot_node.items() if i == node)
        seed = ctx.seeds.get(slot_id, SeedState(slot_id=slot_id))
        if name == "germinate":
            return self._germinate(slot_id, mask, node, bp)
        if name == "advance":
            target = next_stage(seed.stage)
            return AdvanceAction(slot_id=slot_id, target_stage=target), f"gnn chose advance of {slot_id}"
        if name == "cull":
            reason = _cull_reason(seed)
            return CullAction(slot_id=slot_id, reason=reason, detail="learned policy"), f"gnn chose cull of {slot_id}"
        return FossilizeAction(slot_id=slot_id), f"gnn chose fossilize of {slot_id}"

    def _germinate(self, slot_id: str, mask: SafetyMask, node: int, bp: int | None) -> tuple[Action, str]:
        pick = mask.kernels[(node, int(bp if bp is not None else -1))]
        schedule = blend_schedule(self.heuristic.config)
        ref = self.vocabulary.refs[int(bp if bp is not None else -1)]
        action = GerminateAction(slot_id=slot_id, blueprint_ref=ref, kernel_id=pick.kernel.kernel_id,
                                 kernel_sha256=pick.kernel.sha256, schedule=schedule)
        return action, f"gnn chose germinate {ref} (kernel {pick.kernel.kernel_id}) in {slot_id}"


def _cull_reason(seed: SeedState) -> int:
    m = seed.metrics
    if m.non_finite_count:
        return CullReason.CULL_REASON_INSTABILITY
    start, now = m.val_loss_at_stage_start, m.val_loss
    if math.isfinite(start) and math.isfinite(now) and now > start:
        return CullReason.CULL_REASON_REGRESSION
    return CullReason.CULL_REASON_NO_GAIN


__all__ = ["GnnConfig", "GnnPolicy"]
