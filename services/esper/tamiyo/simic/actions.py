"""Between AdaptationDecisions and the GNN's head indices (action type, slot node, blueprint).

`indices` turns a recorded decision into training targets; `legal_choices` and `decision_for`
let the collector explore: pick a uniformly random legal choice under the safety mask and turn
it into a decision exactly as the learned policy would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from esper.leyline.lifecycle import next_stage
from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    CullAction,
    CullReason,
    FossilizeAction,
    GerminateAction,
    WaitAction,
)
from esper.policy.context import PolicyContext
from esper.policy.decisions import Action, make_decision
from esper.policy.heuristic import HeuristicConfig
from esper.tamiyo.policies.features import GraphEncoding
from esper.tamiyo.policies.mask import ACTIONS, GERMINATE, SLOT_ACTIONS, WAIT, SafetyMask
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary

ACTION_INDEX = {name: i for i, name in enumerate(ACTIONS)}


@dataclass(frozen=True)
class Choice:
    """A decision as head indices; node and blueprint are -1 where they do not apply."""

    action: int
    node: int = -1
    blueprint: int = -1


def indices(decision: AdaptationDecision, enc: GraphEncoding, vocab: BlueprintVocabulary) -> Choice | None:
    """The head indices of a decision; None when it cannot be expressed (no action, a slot the
    graph lacks, a blueprint outside the vocabulary)."""
    kind = decision.WhichOneof("action")
    if kind is None or kind not in ACTION_INDEX:
        return None
    a = ACTION_INDEX[kind]
    if a == WAIT:
        return Choice(a)
    node = enc.slot_node.get(getattr(decision, kind).slot_id)
    if node is None:
        return None
    if a != GERMINATE:
        return Choice(a, node)
    bp = vocab.index(decision.germinate.blueprint_ref)
    return None if bp is None else Choice(a, node, bp)


def is_legal(choice: Choice, mask: SafetyMask) -> bool:
    if not mask.actions[choice.action]:
        return False
    if choice.action == WAIT:
        return True
    if not mask.slots[choice.action, choice.node]:
        return False
    return choice.action != GERMINATE or bool(mask.blueprints[choice.node, choice.blueprint])


def legal_choices(mask: SafetyMask) -> list[Choice]:
    """Every legal choice, grouped so that `random_choice` can be uniform per action type."""
    out = [Choice(WAIT)]
    for a in range(SLOT_ACTIONS):
        if not mask.actions[a]:
            continue
        for node in map(int, mask.slots[a].nonzero()[0]):
            if a == GERMINATE:
                out.extend(Choice(a, node, int(b)) for b in mask.blueprints[node].nonzero()[0])
            else:
                out.append(Choice(a, node))
    return out


def random_choice(mask: SafetyMask, rng: random.Random) -> Choice:
    """Uniform over the legal action types, then over their legal slots and blueprints (so a
    germination with 40 legal kernels is no likelier than a wait)."""
    by_action: dict[int, list[Choice]] = {}
    for c in legal_choices(mask):
        by_action.setdefault(c.action, []).append(c)
    action = rng.choice(sorted(by_action))
    return rng.choice(by_action[action])


def decision_for(
    ctx: PolicyContext, enc: GraphEncoding, mask: SafetyMask, choice: Choice, vocab: BlueprintVocabulary,
    config: HeuristicConfig, *, policy_version: str, confidence: float, rationale: str,
) -> AdaptationDecision:
    return make_decision(
        ctx, _action(ctx, enc, mask, choice, vocab, config), policy_version=policy_version,
        horizon_steps=config.decision_horizon_steps, confidence=confidence, rationale=rationale,
    )


def _action(
    ctx: PolicyContext, enc: GraphEncoding, mask: SafetyMask, choice: Choice, vocab: BlueprintVocabulary,
    config: HeuristicConfig,
) -> Action:
    if choice.action == WAIT:
        return WaitAction(steps=config.wait_steps)
    slot_id = next(s for s, i in enc.slot_node.items() if i == choice.node)
    name = ACTIONS[choice.action]
    if name == "germinate":
        pick = mask.kernels[(choice.node, choice.blueprint)]
        schedule = BlendSchedule(
            curve=config.blend_curve, blend_steps=config.blend_steps, training_steps=config.training_steps,
            learning_rate=config.seed_learning_rate, shadow_steps=config.shadow_steps,
            probation_steps=config.probation_steps,
        )
        return GerminateAction(slot_id=slot_id, blueprint_ref=vocab.refs[choice.blueprint],
                               kernel_id=pick.kernel.kernel_id, kernel_sha256=pick.kernel.sha256,
                               schedule=schedule)
    if name == "advance":
        return AdvanceAction(slot_id=slot_id, target_stage=next_stage(ctx.stage_of(slot_id)))
    if name == "cull":
        return CullAction(slot_id=slot_id, reason=CullReason.CULL_REASON_MANUAL, detail="simic exploration")
    return FossilizeAction(slot_id=slot_id)
