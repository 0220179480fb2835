"""Short, real training episodes on the built-in example task, recorded for Simic.

One episode: the digits CNN (Tolaria's `load_task("digits")`, CPU) trains for a few epochs
under a policy run in-process (Tolaria's LocalPolicy, real local kernels from the built-in
catalogue, real Kasmina seeds). Everything the run tells the world is recorded as Leyline
messages: its SessionOpen, the kernels it could germinate, and every snapshot, decision, ack,
seed transition and field report as TelemetryEvents (what Oona would carry).

For diverse actions the collector varies the data order and initialisation (seed), the
heuristic's thresholds (`sample_heuristic`) and explores: with probability epsilon a decision
is a uniformly random legal choice under the safety mask instead of the heuristic's.

What the recorded heuristic grows on is the episodes' `growth_rule`: validation plateaus
only, also diminishing returns (the slowdown rule of Tolaria's local heuristic, which
grows early), or also the first epoch's pace (the local heuristic's full set of rules,
which grows right after the first epoch when its fast learning is over). A policy learns
the timing of the heuristic it imitates, so a policy meant to replace the local heuristic
learns from episodes of its rules. Digits' epochs are short (23 steps at batch 64) and end
before the host's fast learning does, so the first-epoch rule fires there only in
episodes whose epochs pass over the data several times (`epoch_repeats`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import torch

from esper.leyline.v1.control_pb2 import AdaptationDecision
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget, SessionOpen
from esper.leyline.v1.telemetry_pb2 import TelemetryEvent
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy.base import Policy
from esper.policy.context import PolicyContext, graph_digest
from esper.policy.heuristic import HeuristicConfig, HeuristicPolicy
from esper.policy.safety import violation
from esper.tamiyo.policies.features import encode_graph
from esper.tamiyo.policies.mask import policy_mask
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary, default_vocabulary
from esper.tamiyo.simic.actions import decision_for, random_choice
from esper.tamiyo.simic.dataset import Episode

TASK = "digits"
EXPLORE_VERSION = "simic-explore@1"

# The heuristic's thresholds for short episodes of digits (23 steps per epoch at batch 64):
# one epoch improving the validation loss by less than 5% is a plateau (noisy epochs make
# it fire early too), and a seed lives germination -> fossil in about 60 steps, so
# growth, blending and probation all happen inside a short run. The learned policy
# is evaluated with the same schedule (its germinations carry these stage lengths).
EPISODE_HEURISTIC = HeuristicConfig(
    plateau_patience=1, plateau_min_delta=0.05, max_live_seeds=1, training_steps=15, blend_steps=15,
    shadow_steps=5, probation_steps=15, decision_horizon_steps=30, gate_retry_steps=10, wait_steps=5,
    stall_steps=150,
)


LR_SCHEDULES = ("constant", "cosine")
GROWTH_RULES = ("plateau", "slowdown", "first-epoch")
# The slowdown rule's ratios a slowdown episode draws from (the local heuristic's 0.5, and
# a more patient 0.25), judged epoch by epoch as the local heuristic does.
SLOWDOWN_RATIOS = (0.5, 0.25)
SLOWDOWN_WINDOW = 1


@dataclass(frozen=True)
class EpisodeConfig:
    """One episode's setup, each value with its reason."""

    # Thirty epochs: the example task's narrow host (a capacity bottleneck) plateaus around
    # epoch 12-15, leaving room for several seed lifetimes whose effect shows by the end
    # (12 epochs: heuristic +0.3% over static; 30: +1.7%, 32 of 32 seeds fossilized); an
    # episode takes about 5 s on one CPU core.
    epochs: int = 30
    # A snapshot (and a decision) every 5 steps: ~5 decisions per epoch of 23 steps.
    snapshot_every: int = 5
    # Layer health sampled so that each snapshot window carries what a deployed run's does
    # (Tolaria's defaults over its 20-step window: one step's activation statistics and two
    # gradient norms). At Tolaria's own rates (1 in 20, 1 in 10) three windows in four of a
    # 5-step episode read activations of 0 and half read no gradient, a state no deployed
    # run shows: a policy trained on them read the Fashion-MNIST CNN's full health rows as
    # unfamiliar and waited there (p(germinate) 0.03 after epoch 1, 0.09 with health zeroed).
    health_activation_every: int = 5
    health_sample_every: int = 2
    batch_size: int = 64
    # Adam at 3e-3 brings the CNN to ~90% in a few epochs, then it plateaus.
    learning_rate: float = 3e-3
    # The rate over the episode, one of LR_SCHEDULES: constant, or decayed to zero on a
    # cosine over the episode's steps (the regime of a run trained with such a schedule,
    # where growth pays only early: a policy learns the timing of the runs it saw).
    lr_schedule: str = "constant"
    # What the recorded heuristic grows on, one of GROWTH_RULES (see the module docstring).
    growth_rule: str = "plateau"
    # Passes over the training data per epoch. One: digits' first epoch (23 steps) ends
    # before the fast learning does (its first-epoch pace measured 0.9-10, the rule fires
    # below 0.5). Eight: the first epoch holds it (pace 0.07-0.35 on five held-out seeds),
    # as the first epoch of a Fashion-MNIST run (390 steps) holds its own.
    epoch_repeats: int = 1
    # Growth budget sent with the run (Tolaria tightens it to Kasmina's cap, half the
    # narrow host's 2,570 parameters, so the larger kernels do not fit).
    max_added_params: int = 5000
    # One torch thread: episodes are tiny and the machine is shared (threads only contend).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.growth_rule not in GROWTH_RULES:
            raise ValueError(f"growth_rule must be one of {GROWTH_RULES}, got {self.growth_rule!r}")
        if self.epoch_repeats < 1:
            raise ValueError(f"epoch_repeats must be >= 1, got {self.epoch_repeats}")
        for name in ("snapshot_every", "health_activation_every", "health_sample_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class EventRecorder:
    """A Telemetry producer that keeps the events in memory (the episode's event log)."""

    @dataclass
    class Stats:
        dropped: int = 0

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []

    def publish(self, event: TelemetryEvent) -> bool:
        self.events.append(event)
        return True

    def stats(self) -> EventRecorder.Stats:
        return EventRecorder.Stats()

    def record_decision(self, decision: AdaptationDecision) -> None:
        from esper.oona.envelope import new_event

        self.events.append(new_event(source="tamiyo", run_id=decision.run_id, decision=decision))


class ExploringHeuristic:
    """The heuristic, except that with probability `epsilon` it takes a random legal choice."""

    name = "simic-explore"

    def __init__(self, config: HeuristicConfig, epsilon: float, rng: random.Random,
                 vocabulary: BlueprintVocabulary | None = None) -> None:
        self.heuristic = HeuristicPolicy(config)
        self.epsilon = epsilon
        self.rng = rng
        self.vocabulary = vocabulary or default_vocabulary()
        self._encodings: dict[str, object] = {}

    @property
    def version(self) -> str:
        return self.heuristic.version

    def decide(self, ctx: PolicyContext) -> AdaptationDecision:
        if self.rng.random() >= self.epsilon:
            return self.heuristic.decide(ctx)
        key = graph_digest(ctx.graph)
        enc = self._encodings.get(key)
        if enc is None:  # encoded once per graph, not on every exploring decision
            enc = self._encodings[key] = encode_graph(ctx.graph)
        c = self.heuristic.config
        # The learned policy's own mask (its ranking under a FLOPs budget, the stream's
        # hold): exploration tries only what the policy it trains could choose.
        mask = policy_mask(ctx, enc, self.vocabulary, self.heuristic)  # type: ignore[arg-type]
        choice = random_choice(mask, self.rng)
        decision = decision_for(ctx, enc, mask, choice, self.vocabulary, c,  # type: ignore[arg-type]
                                policy_version=EXPLORE_VERSION, confidence=0.0,
                                rationale=f"epsilon-exploration (epsilon={self.epsilon:.2f})")
        return self.heuristic.decide(ctx) if violation(decision, ctx, *self.heuristic.limits(ctx)) else decision


class RecordingPolicy:
    """Wraps a policy; every decision it makes goes to the recorder, as Tamiyo would publish it."""

    def __init__(self, policy: Policy, recorder: EventRecorder) -> None:
        self.policy, self.recorder = policy, recorder
        self.name = policy.name

    @property
    def version(self) -> str:
        return self.policy.version

    def decide(self, ctx: PolicyContext) -> AdaptationDecision:
        decision = self.policy.decide(ctx)
        self.recorder.record_decision(decision)
        return decision


def episode_heuristic(growth_rule: str = "plateau") -> HeuristicConfig:
    """The heuristic held-out episodes are judged against, for a growth rule: the episodes'
    thresholds, plus the local heuristic's slowdown rule (0.5, epoch by epoch) for
    "slowdown", and its first-epoch rule too for "first-epoch"."""
    if growth_rule == "plateau":
        return EPISODE_HEURISTIC
    return _with_rule(dataclasses.replace(EPISODE_HEURISTIC, slowdown_ratio=SLOWDOWN_RATIOS[0]),
                      growth_rule)


def _with_rule(config: HeuristicConfig, growth_rule: str) -> HeuristicConfig:
    """`config` growing on diminishing returns epoch by epoch, and on the first epoch's pace
    for "first-epoch" (both at its slowdown ratio)."""
    return dataclasses.replace(config, slowdown_window=SLOWDOWN_WINDOW,
                               seed_first_epoch_pace=growth_rule == "first-epoch")


def sample_heuristic(rng: random.Random, base: HeuristicConfig = EPISODE_HEURISTIC,
                     growth_rule: str = "plateau") -> HeuristicConfig:
    """Randomized thresholds around `base`, so the recorded heuristic is not one fixed rule
    (the slowdown rule's ratio drawn last: plateau episodes draw what they always drew)."""
    config = dataclasses.replace(
        base,
        plateau_patience=rng.choice((1, 1, 2)),
        plateau_min_delta=rng.choice((0.02, 0.05, 0.1, 0.2)),
        training_steps=rng.choice((10, 15, 25)),
        blend_steps=rng.choice((10, 15, 25)),
        probation_steps=rng.choice((10, 15, 25)),
        regression_tolerance=rng.choice((0.01, 0.02, 0.05)),
    )
    if growth_rule != "plateau":
        config = _with_rule(dataclasses.replace(config, slowdown_ratio=rng.choice(SLOWDOWN_RATIOS)),
                            growth_rule)
    return config


@dataclass
class EpisodeResult:
    episode: Episode
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def task_context(config: EpisodeConfig | None = None) -> tuple[SessionOpen, list[KernelCandidate]]:
    """The SessionOpen and the local kernels of the example task's runs (what telemetry from
    Oona or Nissa lacks); built by attaching a session to a fresh model, with no training."""
    from esper.tolaria import TolariaConfig, attach
    from esper.tolaria.tasks import load_task

    cfg = config or EpisodeConfig()
    task = load_task(TASK, batch_size=cfg.batch_size, seed=0)
    session = attach(task.model, torch.optim.Adam(task.model.parameters()), "none",
                     example_input=task.example_input, config=TolariaConfig(progress=False),
                     budget=ResourceBudget(max_added_params=cfg.max_added_params))
    try:
        return session.open_message, _candidates(session)
    finally:
        session.close()


def _candidates(session) -> list[KernelCandidate]:
    seen: dict[str, KernelCandidate] = {}
    for slot in session.graph.slots:
        for cand in session.local_kernels.kernels_for(slot.shape):
            seen.setdefault(f"{cand.kernel.kernel_id}/{cand.kernel.target.shape.SerializeToString()}", cand)
    return list(seen.values())


class RepeatedLoader:
    """A loader's batches `repeats` times over: one epoch of several passes over the data."""

    def __init__(self, loader, repeats: int) -> None:
        self.loader, self.repeats = loader, repeats

    def __len__(self) -> int:
        return self.repeats * len(self.loader)

    def __iter__(self):
        for _ in range(self.repeats):
            yield from self.loader


def run_episode(policy: Policy, seed: int, config: EpisodeConfig | None = None,
                run_id: str | None = None) -> EpisodeResult:
    """Train the example task once under `policy` (deterministic for a seed and policy) and
    return the recorded episode with Tolaria's summary."""
    from esper.tolaria import LocalPolicy, TolariaConfig, Trainer
    from esper.tolaria.tasks import load_task
    from esper.tolaria.telemetry import Telemetry

    cfg = config or EpisodeConfig()
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(seed)
    task = load_task(TASK, batch_size=cfg.batch_size, seed=seed)
    train_loader = RepeatedLoader(task.train_loader, cfg.epoch_repeats)
    recorder = EventRecorder()
    tconf = TolariaConfig(run_id=run_id or f"simic-{seed}", snapshot_every=cfg.snapshot_every, progress=False,
                          health_sample_every=cfg.health_sample_every,
                          health_activation_every=cfg.health_activation_every)
    local = LocalPolicy(policy=RecordingPolicy(policy, recorder))
    total_steps = cfg.epochs * len(train_loader)
    cosine = None if cfg.lr_schedule == "constant" else \
        (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps))
    trainer = Trainer(
        task.model, lambda params: torch.optim.Adam(params, lr=cfg.learning_rate),
        train_loader, task.val_loader, epochs=cfg.epochs, policy=local, config=tconf,
        example_input=task.example_input, telemetry=Telemetry(tconf.run_id, producer=recorder),
        budget=ResourceBudget(max_added_params=cfg.max_added_params),
        scheduler=cosine, scheduler_interval="step",
    )
    session = trainer.session
    summary = trainer.fit()
    episode = Episode(session.open_message, _candidates(session), list(recorder.events))
    return EpisodeResult(episode, summary, trainer.history)


def collection_policy(index: int, seed: int, epsilon_range: tuple[float, float],
                      growth_rule: str = "plateau") -> ExploringHeuristic:
    """The policy of the `index`-th collected episode: sampled thresholds and epsilon."""
    rng = random.Random(seed * 100_003 + index)
    low, high = epsilon_range
    heuristic = sample_heuristic(rng, growth_rule=growth_rule)
    return ExploringHeuristic(heuristic, rng.uniform(low, high), rng)


# Episode seeds of collection start here; held-out evaluation seeds start at
# HELD_OUT_SEED_BASE, far away, so no evaluation run shares data order or initialisation
# with a training episode.
COLLECT_SEED_BASE = 0
HELD_OUT_SEED_BASE = 1_000_000
# Exploration rate range; each episode draws its own epsilon from it.
DEFAULT_EPSILON = (0.05, 0.3)


def collect(out_dir: str, episodes: int, *, seed: int = 0, config: EpisodeConfig | None = None,
            epsilon: tuple[float, float] = DEFAULT_EPSILON, progress=None) -> list[EpisodeResult]:
    """Run and record `episodes` episodes into `out_dir` (one file each); deterministic for a
    seed. `progress(i, result)` is called after each."""
    from esper.tamiyo.simic.dataset import write_episode

    if episodes <= 0:
        raise ValueError(f"episodes must be > 0, got {episodes}")
    low, high = epsilon
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"epsilon range must satisfy 0 <= low <= high <= 1, got {epsilon}")
    results = []
    for i in range(episodes):
        episode_seed = COLLECT_SEED_BASE + seed * 10_000 + i
        policy = collection_policy(i, seed, epsilon, (config or EpisodeConfig()).growth_rule)
        result = run_episode(policy, episode_seed, config, run_id=f"simic-s{seed}-e{i:04d}")
        write_episode(out_dir, result.episode)
        results.append(result)
        if progress is not None:
            progress(i, result)
    return results
