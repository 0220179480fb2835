"""The losses of Simic over the GNN's heads: masked log-probabilities of recorded choices,
behaviour cloning, and IQL (Kostrikov et al. 2021): expectile value regression, a TD-trained
critic and advantage-weighted policy extraction.

Masked entries get logit MASKED_LOGIT before the softmax, so an illegal choice has probability
exp(-1e9) == 0 in float32 and the gradient stays finite (an -inf logit gives NaN gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from esper.tamiyo.policies.mask import GERMINATE, WAIT
from esper.tamiyo.policies.network import slot_candidate_term
from esper.tamiyo.simic.tensors import GraphBatch

MASKED_LOGIT = -1e9


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.masked_fill(~mask, MASKED_LOGIT), dim=-1)


def _rows(b: int) -> torch.Tensor:
    return torch.arange(b)


def choice_log_prob(heads: tuple[torch.Tensor, ...], batch: GraphBatch) -> torch.Tensor:
    """log pi(action) + log pi(slot | action) + log pi(blueprint | slot), each under its mask."""
    action_logits, slot_logits, bp_logits, _ = heads
    rows = _rows(len(batch))
    logp = masked_log_softmax(action_logits, batch.action_mask)[rows, batch.action]
    acts_on_slot = batch.action != WAIT
    a = batch.action.clamp(max=slot_logits.shape[-1] - 1)
    node = batch.node.clamp(min=0)
    slot_lp = masked_log_softmax(slot_logits[rows, :, a], batch.slot_mask[rows, a])[rows, node]
    logp = logp + torch.where(acts_on_slot, slot_lp, torch.zeros_like(slot_lp))
    germ = batch.action == GERMINATE
    bp = batch.blueprint.clamp(min=0)
    if bp_logits.shape[-1]:
        bp_lp = masked_log_softmax(bp_logits[rows, node], batch.blueprint_mask[rows, node])[rows, bp]
        logp = logp + torch.where(germ, bp_lp, torch.zeros_like(bp_lp))
    return logp


def candidate_log_prob(term: torch.Tensor, batch: GraphBatch) -> torch.Tensor:
    """log pi(slot | germinate) + log pi(blueprint | slot) of each recorded germination under
    the candidate terms alone (`term` (B, N, V): the candidate head on batch.candidates), each
    under its mask; 0 for the other decisions. What the transferable features say of a
    germination, without the node embeddings' part."""
    rows = _rows(len(batch))
    node, bp = batch.node.clamp(min=0), batch.blueprint.clamp(min=0)
    slots = slot_candidate_term(term, batch.candidates)
    slot_lp = masked_log_softmax(slots, batch.slot_mask[:, GERMINATE])[rows, node]
    bp_lp = masked_log_softmax(term[rows, node], batch.blueprint_mask[rows, node])[rows, bp]
    germ = batch.action == GERMINATE
    return torch.where(germ, slot_lp + bp_lp, torch.zeros_like(slot_lp))


def critic_value(heads: tuple[torch.Tensor, ...], batch: GraphBatch) -> torch.Tensor:
    """Q(s, a) read off a critic net with the policy's architecture: the action head scores the
    action type, the node head the (slot, action) and (slot, blueprint) pairs (with the
    candidate head's terms); Q is their sum."""
    action_q, slot_q, bp_q, _ = heads
    rows = _rows(len(batch))
    q = action_q[rows, batch.action]
    node = batch.node.clamp(min=0)
    a = batch.action.clamp(max=slot_q.shape[-1] - 1)
    q = q + torch.where(batch.action != WAIT, slot_q[rows, node, a], torch.zeros_like(q))
    if bp_q.shape[-1]:
        bp = bp_q[rows, node, batch.blueprint.clamp(min=0)]
        q = q + torch.where(batch.action == GERMINATE, bp, torch.zeros_like(q))
    return q


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """E[|tau - 1(diff < 0)| diff^2]: tau > 0.5 pushes V toward an upper expectile of Q."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.pow(2)).mean()
