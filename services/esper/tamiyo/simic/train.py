"""Simic's trainer: behaviour cloning from the heuristic plus IQL over the GNN's heads.

Per minibatch of recorded transitions (features and safety masks rebuilt as at inference):

    critic  Q(s,a)  <- r + gamma * (1 - done) * V(s')                    (TD, squared error)
    value   V(s)    <- expectile_tau of Q_target(s,a) - V(s)              (the policy's value head)
    actor   - bc_weight  * mean_{heuristic decisions} log pi(a|s)
            - awr_weight * mean_all min(exp(beta * (Q_target - V)), max_weight) * log pi(a|s)
            - candidate_bc_weight * mean_{heuristic germinations} log pi_candidates(slot, bp|s)

pi(a|s) is the product of the action, slot and blueprint heads, each a softmax with illegal
entries masked out. The critic is a second PolicyNet used only here; the actor (with its value
head) is what the artifact holds. Same data, config and seed give the same weights (CPU).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from esper.policy.heuristic import HeuristicConfig
from esper.tamiyo.policies.artifact import save_policy, tensors_digest
from esper.tamiyo.policies.gnn import POLICY_NAME
from esper.tamiyo.policies.mask import ACTIONS, GERMINATE
from esper.tamiyo.policies.network import NetworkShape, PolicyNet
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary, default_vocabulary
from esper.tamiyo.simic.dataset import Dataset
from esper.tamiyo.simic.episodes import EPISODE_HEURISTIC
from esper.tamiyo.simic.losses import (
    candidate_log_prob,
    choice_log_prob,
    critic_value,
    expectile_loss,
)
from esper.tamiyo.simic.reward import RewardConfig
from esper.tamiyo.simic.tensors import GraphBatch, TensorSet, build_tensors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimicConfig:
    """Training hyper-parameters, each with its reason."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 3e-3
    # Behaviour cloning keeps the policy near the heuristic, which is sound where data is thin.
    bc_weight: float = 1.0
    # Advantage-weighted extraction moves it toward actions that earned more than V expects.
    awr_weight: float = 1.0
    # How far the policy's losses even out the growth decision's choices (action_weights): 0
    # weighs every decision alike (the episodes' mix: 5,122 waits to 215 germinations), 1
    # weighs germinate and wait by the inverse of their shares. Balanced, the few
    # germinations at the heuristic's signal are learned rather than averaged away by the
    # waits around them: right after a long first epoch (4 germinations there in 6,250
    # decisions) p(germinate) was 0.04-0.07 unbalanced, 0.58 balanced.
    action_balance: float = 0.0
    # Behaviour cloning of the heuristic's germinations (slot and blueprint) by the candidate
    # terms alone (losses.candidate_log_prob). Without it the node embeddings, which learn
    # which slot and block paid on the episodes' task, carry most of those choices and decide
    # them on another task's graph; the candidate features mean the same there. 0: off.
    candidate_bc_weight: float = 0.0
    # Value regression weight inside the actor's loss (V is the actor's value head).
    value_weight: float = 1.0
    # Discount per decision: ~40 decisions per episode, 0.95 credits an epoch's gain to the
    # ten or so decisions before it.
    gamma: float = 0.95
    # IQL expectile: 0.7 is the IQL paper's choice for noisy, mixed-quality data.
    expectile: float = 0.7
    # Inverse temperature of the advantage weights, and their cap (keeps one lucky sample
    # from dominating a batch).
    beta: float = 3.0
    max_weight: float = 100.0
    # Polyak rate of the target critic.
    target_tau: float = 0.05
    # Gradient-norm clip: a few large-reward epochs must not blow up the small net.
    grad_clip: float = 1.0
    seed: int = 0
    # Torch threads while training: the net is tiny and batches small, so more threads only
    # add synchronisation (on a shared 2-core machine 4+ threads ran ~30x slower than 1).
    torch_threads: int = 1
    reward: RewardConfig = field(default_factory=RewardConfig)
    # Rules and thresholds of the plateau and growth-signal features and of the safety mask
    # (the evaluation's too): episodes.episode_heuristic of the rule the episodes grew on.
    heuristic: HeuristicConfig = EPISODE_HEURISTIC

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochStats:
    epoch: int
    bc_loss: float
    awr_loss: float
    value_loss: float
    critic_loss: float


@dataclass
class TrainResult:
    net: PolicyNet
    vocabulary: BlueprintVocabulary
    history: list[EpochStats]
    samples: int
    tensors: TensorSet
    version: str = ""
    sha256: str = ""

    def save(self, path: str | Path, version: str | None = None) -> str:
        """Write the versioned safetensors artifact; returns its SHA-256."""
        digest = tensors_digest({k: v for k, v in self.net.state_dict().items()})
        self.version = version or f"{POLICY_NAME}@simic-{digest[:12]}"
        self.sha256 = save_policy(path, self.net, self.vocabulary, self.version)
        return self.sha256


def _batches(data: TensorSet, size: int, gen: torch.Generator) -> list[GraphBatch]:
    out = []
    for group in data.batches:
        order = torch.randperm(len(group), generator=gen)
        out.extend(group.take(order[i:i + size]) for i in range(0, len(group), size))
    return [out[i] for i in torch.randperm(len(out), generator=gen)]


def _forward(net: PolicyNet, batch: GraphBatch, *, nxt: bool = False) -> tuple[torch.Tensor, ...]:
    if nxt:  # only the value head is read at the next state
        return net(batch.next_x, batch.encoding.adjacency, batch.next_g)
    return net(batch.x, batch.encoding.adjacency, batch.g, candidates=batch.candidates)


# The choices of the growth decision, the ones action_balance evens out.
GROWTH_CHOICES = ("germinate", "wait")


def action_weights(counts: dict[str, int], balance: float) -> torch.Tensor:
    """A weight per action (ACTIONS' order). The growth decision's two choices, germinate
    and wait, weigh (their share of those decisions) ** -balance, scaled so that those
    decisions' mean weight is 1; every other action weighs 1 (advance, cull and fossilize
    follow a seed's state, and weighting them up made a policy cull and re-grow a seed
    again and again, as the episodes' exploration did)."""
    weights = [1.0] * len(ACTIONS)
    growth = {a: counts.get(a, 0) for a in GROWTH_CHOICES}
    total = sum(growth.values())
    if not balance or not total:
        return torch.tensor(weights)
    raw = {a: (n / total) ** -balance if n else 1.0 for a, n in growth.items()}
    mean = sum(raw[a] * n for a, n in growth.items()) / total
    for a in growth:
        weights[ACTIONS.index(a)] = raw[a] / mean
    return torch.tensor(weights)


class SimicTrainer:
    def __init__(self, data: TensorSet, config: SimicConfig, vocabulary: BlueprintVocabulary,
                 shape: NetworkShape | None = None, initial: PolicyNet | None = None) -> None:
        torch.manual_seed(config.seed)
        self.data, self.config, self.vocabulary = data, config, vocabulary
        base = shape or NetworkShape()
        self.actor = initial or PolicyNet(NetworkShape(**{**base.as_dict(), "vocabulary": len(vocabulary)}))
        self.critic = PolicyNet(self.actor.shape)
        self.critic_target = copy.deepcopy(self.critic).eval()
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.learning_rate)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.learning_rate)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.action_weights = action_weights(data.counts, config.action_balance)

    def bc_loss(self, batch: GraphBatch) -> torch.Tensor:
        """Mean negative log-likelihood of the heuristic's decisions in the batch (eval mode)."""
        was = self.actor.training
        self.actor.eval()
        with torch.no_grad():
            logp = choice_log_prob(_forward(self.actor, batch), batch)
        self.actor.train(was)
        return -logp[batch.imitate].mean() if batch.imitate.any() else torch.tensor(0.0)

    def candidate_bc_loss(self, batch: GraphBatch) -> torch.Tensor:
        """Mean negative log-likelihood of the heuristic's germinations under the actor's
        candidate terms alone."""
        rows = batch.imitate & (batch.action == GERMINATE)
        if not rows.any():
            return torch.zeros(())
        term = self.actor.candidate_head(batch.candidates).squeeze(-1)
        return -candidate_log_prob(term, batch)[rows].mean()

    def step(self, batch: GraphBatch) -> tuple[float, float, float, float]:
        c = self.config
        with torch.no_grad():
            next_v = _forward(self.actor, batch, nxt=True)[3]
            q_target = critic_value(_forward(self.critic_target, batch), batch)
        # critic: TD toward r + gamma V(s')
        target = batch.reward + c.gamma * (1.0 - batch.done) * next_v
        critic_loss = (critic_value(_forward(self.critic, batch), batch) - target).pow(2).mean()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), c.grad_clip)
        self.critic_opt.step()
        # actor: value expectile + BC + advantage-weighted log-likelihood
        heads = _forward(self.actor, batch)
        value = heads[3]
        value_loss = expectile_loss(q_target - value, c.expectile)
        logp = choice_log_prob(heads, batch) * self.action_weights[batch.action]
        weights = torch.exp(c.beta * (q_target - value.detach())).clamp(max=c.max_weight)
        awr = -(weights * logp).mean()
        bc = -logp[batch.imitate].mean() if batch.imitate.any() else torch.zeros(())
        loss = c.bc_weight * bc + c.awr_weight * awr + c.value_weight * value_loss
        if c.candidate_bc_weight:
            loss = loss + c.candidate_bc_weight * self.candidate_bc_loss(batch)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.actor_opt.step()
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters(), strict=True):
                tp.mul_(1.0 - c.target_tau).add_(p, alpha=c.target_tau)
        return bc.item(), awr.item(), value_loss.item(), critic_loss.item()

    def run(self, epochs: int | None = None) -> list[EpochStats]:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.torch_threads)
        try:
            return self._run(epochs)
        finally:
            torch.set_num_threads(threads)

    def _run(self, epochs: int | None) -> list[EpochStats]:
        history = []
        self.actor.train()
        self.critic.train()
        for epoch in range(epochs if epochs is not None else self.config.epochs):
            sums, n = [0.0, 0.0, 0.0, 0.0], 0
            for batch in _batches(self.data, self.config.batch_size, self.gen):
                for i, v in enumerate(self.step(batch)):
                    sums[i] += v
                n += 1
            stats = EpochStats(epoch + 1, *(s / max(n, 1) for s in sums))
            if not all(math.isfinite(v) for v in sums):
                raise FloatingPointError(f"Simic training diverged at epoch {epoch + 1}: {stats}")
            log.info("simic epoch %d: bc %.4f awr %.4f value %.4f critic %.4f", *asdict(stats).values())
            history.append(stats)
        self.actor.eval()
        return history


def train_policy(dataset: Dataset, config: SimicConfig | None = None, *,
                 vocabulary: BlueprintVocabulary | None = None,
                 shape: NetworkShape | None = None) -> TrainResult:
    """Train the learned policy on a dataset; save the result with `TrainResult.save`."""
    cfg = config or SimicConfig()
    vocab = vocabulary or default_vocabulary()
    tensors = build_tensors(dataset.transitions(cfg.reward), vocab, cfg.heuristic)
    if not len(tensors):
        raise ValueError("no usable transitions in the dataset (every decision was unexpressible or illegal)")
    trainer = SimicTrainer(tensors, cfg, vocab, shape)
    history = trainer.run()
    return TrainResult(trainer.actor, vocab, history, len(tensors), tensors)
