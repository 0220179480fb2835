"""The learned policy's safety mask: which (action, slot, blueprint) choices are legal now.

Legal means: the lifecycle table allows the transition (`esper.leyline.lifecycle`), the slot
is known, not embargoed and (for germination) dormant with a free live-seed place, and the
blueprint has a concrete kernel offered by the candidate provider that fits the budget and
whose risk is within the limit. Masked choices get probability 0, so the net can never pick
them; `safety.violation` checks the result once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from esper.leyline.lifecycle import is_allowed
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy import budget as budgeting
from esper.policy.context import PolicyContext
from esper.policy.health import health_score
from esper.policy.heuristic import HeuristicConfig, HeuristicPolicy, benefit_per_cost
from esper.policy.safety import ADVANCEABLE_STAGES
from esper.tamiyo.policies.features import CANDIDATE_FEATURES, GraphEncoding, candidate_features
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary

S = SeedStage
# Plain ints: protobuf enum attribute lookups are slow on hot paths.
DORMANT, CULLED, FOSSILIZED = (int(S.SEED_STAGE_DORMANT), int(S.SEED_STAGE_CULLED), int(S.SEED_STAGE_FOSSILIZED))

# The action head's outputs, in order. The first four act on a slot; wait does not.
ACTIONS: tuple[str, ...] = ("germinate", "advance", "cull", "fossilize", "wait")
SLOT_ACTIONS = 4
GERMINATE, ADVANCE, CULL, FOSSILIZE, WAIT = range(len(ACTIONS))


@dataclass
class SafetyMask:
    actions: np.ndarray  # (len(ACTIONS),) bool
    slots: np.ndarray  # (SLOT_ACTIONS, N) bool
    blueprints: np.ndarray  # (N, V) bool: legal germinations
    kernels: dict[tuple[int, int], KernelCandidate] = field(default_factory=dict)
    # (N, V, CANDIDATE_FEATURES): what the heuristic's ranking says of each legal germination
    candidates: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, CANDIDATE_FEATURES), np.float32))
    notes: list[str] = field(default_factory=list)  # why germination is impossible, if it is


def _stage_legal(stage: int) -> list[bool]:
    return [
        False,  # germination is decided with the blueprints below
        stage in ADVANCEABLE_STAGES,
        is_allowed(stage, CULLED),
        is_allowed(stage, FOSSILIZED),
    ]


# Every stage's row, computed once: a mask asks for each slot of every decision.
_STAGE_LEGAL = {int(stage): _stage_legal(int(stage)) for stage in S.values()}
_DORMANT_LEGAL = np.array(_STAGE_LEGAL[DORMANT], dtype=bool)[:, None]  # (SLOT_ACTIONS, 1)


def build_mask(
    ctx: PolicyContext,
    enc: GraphEncoding,
    vocab: BlueprintVocabulary,
    risk_limit: float,
    max_live: int,
    config: HeuristicConfig,
) -> SafetyMask:
    """The mask of `ctx`; `config` ranks the kernels (of a blueprint, the best is offered;
    the candidate features say how each ranks)."""
    n, v = enc.num_nodes, len(vocab)
    slots = np.zeros((SLOT_ACTIONS, n), dtype=bool)
    blueprints = np.zeros((n, v), dtype=bool)
    mask = SafetyMask(np.zeros(len(ACTIONS), dtype=bool), slots, blueprints)
    # A slot without a seed is dormant: every slot's column at once, then the few with seeds
    # (a pass over the graph's slots cost most of the mask).
    slots[:, enc.slot_nodes] = _DORMANT_LEGAL
    for slot_id, seed in ctx.seeds.items():
        i = enc.slot_node.get(slot_id)
        if i is not None:
            stage = seed.stage
            slots[:, i] = _STAGE_LEGAL.get(stage) or _stage_legal(stage)
    scores = _mask_germination(ctx, enc, vocab, risk_limit, max_live, config, mask)
    health = {i: health_score(ctx.health_of(slot)) for slot in ctx.graph.slots
              if (i := enc.slot_node.get(slot.slot_id)) is not None and mask.blueprints[i].any()}
    mask.candidates = candidate_features(mask.kernels, scores, health, n, v,
                                         ctx.snapshot.resources.model_flops_per_example)
    slots[GERMINATE] = blueprints.any(axis=1) if v else False
    mask.actions[:SLOT_ACTIONS] = slots.any(axis=1)
    mask.actions[WAIT] = True
    return mask


def policy_mask(ctx: PolicyContext, enc: GraphEncoding, vocab: BlueprintVocabulary,
                heuristic: HeuristicPolicy) -> SafetyMask:
    """The learned policy's mask under `heuristic`, the policy it is given: its risk and
    live-seed limits, its ranking of kernels in this run, and no germination while its
    residual-stream rule holds growth (the learned policy widens the stream by that rule,
    so the stream's phase is the rule's: a seed germinated then keeps the stream from
    widening again while it lives)."""
    mask = build_mask(ctx, enc, vocab, *heuristic.limits(ctx), heuristic.ranking(ctx))
    hold = heuristic.stream_hold(ctx)
    if hold:
        forbid_germination(mask, hold)
    return mask


def forbid_germination(mask: SafetyMask, why: str) -> None:
    """No germination is legal in `mask` (the residual stream's rule holds growth: see
    HeuristicPolicy.stream_hold); `why` goes into its notes."""
    mask.blueprints[:] = False
    mask.kernels.clear()
    mask.candidates[:] = 0.0
    mask.slots[GERMINATE] = False
    mask.actions[GERMINATE] = False
    mask.notes.append(f"no germination: {why}")


def _mask_germination(
    ctx: PolicyContext,
    enc: GraphEncoding,
    vocab: BlueprintVocabulary,
    risk_limit: float,
    max_live: int,
    config: HeuristicConfig,
    mask: SafetyMask,
) -> dict[tuple[int, int], float]:
    """Fills the mask's legal germinations, each blueprint's best kernel per slot; returns
    those kernels' benefit per cost under `config`."""
    scores: dict[tuple[int, int], float] = {}
    if max_live and ctx.live_seed_count() >= max_live:
        mask.notes.append(f"{ctx.live_seed_count()} live seeds, limit {max_live}")
        return scores
    if ctx.candidates.unavailable_reason:
        mask.notes.append(f"no germination: {ctx.candidates.unavailable_reason}")
        return scores
    check = budgeting.BudgetCheck(ctx, risk_limit)
    flops = ctx.snapshot.resources.model_flops_per_example
    for slot in ctx.graph.slots:
        i = enc.slot_node.get(slot.slot_id)
        if i is None or ctx.stage_of(slot.slot_id) != DORMANT or ctx.is_embargoed(slot.slot_id):
            continue
        ok, _ = check.split(ctx.candidates.candidates(slot, ctx.budget), slot)
        for candidate in ok:
            j = vocab.index(candidate.kernel.blueprint_ref or budgeting.blueprint_ref(candidate.blueprint))
            if j is None:
                continue
            score = benefit_per_cost(candidate, config, flops)
            if (i, j) not in scores or score > scores[(i, j)]:
                scores[(i, j)] = score
                mask.kernels[(i, j)] = candidate
                mask.blueprints[i, j] = True
    if not mask.kernels:
        mask.notes.append("no affordable kernel in the vocabulary is offered for any open slot")
    return scores
