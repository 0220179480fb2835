"""The learned-policy arm: Simic's GNN policy, trained offline (behaviour cloning + IQL) on
episodes Simic records on the digits example task, never on Fashion-MNIST (no leakage),
under the run's own learning-rate schedule (a decaying rate changes when growth pays) and
with a recorded heuristic that grows by the local heuristic's rules, on diminishing returns
and on the first epoch's pace (`growth_rule="first-epoch"`: a policy learns the timing of
the heuristic it imitates; some episodes' epochs pass over the data several times, so
their first epoch holds the fast learning and that rule fires), then
used on Fashion-MNIST through the user-facing API: `attach(model, optimizer,
policy=LocalPolicy(policy=GnnPolicy))`. Its germinations carry the local heuristic's stage
lengths (the GNN takes schedules and its fallback from the heuristic it is given, here at
Esper's local defaults), so it differs from the heuristic arm only in its decisions.

The policy is trained once per output directory and reused (its file name says how it
was made, and for which layout of the GNN's features: a policy of an older layout is not
loaded but trained again); the episodes and training are not counted in any arm's FLOPs (a policy is
trained once, for every later run)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from esper.policy.context import PolicyContext
from esper.policy.heuristic import HeuristicPolicy
from esper.tamiyo.policies.features import FEATURE_SCHEMA
from esper.tamiyo.policies.gnn import STREAM_RULE_MARK, GnnPolicy
from esper.tamiyo.simic.dataset import load_dataset
from esper.tamiyo.simic.episodes import EpisodeConfig, collect, episode_heuristic
from esper.tamiyo.simic.evaluate import FALLBACK_MARK
from esper.tamiyo.simic.train import SimicConfig, train_policy
from esper.tolaria import LOCAL_HEURISTIC, LocalPolicy

# Simic's benchmark uses 20 digits episodes of 30 epochs and 30 training epochs; the policy
# here learns from those and from 10 episodes whose 8 epochs pass over the data 8 times
# each (LONG_EPOCHS), where the first epoch holds the fast learning and the first-epoch
# rule fires, as it does on Fashion-MNIST (about the same steps: 1,472 against 690).
EPISODES, EPISODE_EPOCHS, SIMIC_EPOCHS = 20, 30, 30
LONG_EPISODES, LONG_EPOCHS = 10, (8, 8)  # (epochs, passes over the data per epoch)
QUICK = (2, 3, 2)
QUICK_LONG = (1, (2, 2))
# The heuristic the policy imitates grows by the local heuristic's rules: diminishing
# returns, and the first epoch's pace.
GROWTH_RULE = "first-epoch"
# The growth decision's two choices, germinate and wait, weigh alike in Simic's losses
# (SimicConfig.action_balance): the germinations right after a long first epoch are few
# among the waits, and unbalanced the policy waited through them on the CNN.
ACTION_BALANCE = 1.0
# The heuristic's germinations are also cloned by the candidate features alone
# (SimicConfig.candidate_bc_weight): with it the policy takes every germination itself on the
# CNN (without it, its heuristic fallback took one in 2 seeds of 5) and chooses the RMSNorm
# seed the candidate features rank best on the char host (without it, IA3: -0.02 pp, 2/3).
CANDIDATE_BC = 1.0


def policy_file(work_dir: Path, quick: bool, lr_schedule: str) -> Path:
    """The policy for runs under `lr_schedule`, trained on episodes of GROWTH_RULE under the
    same schedule (the name says which: "-firs", "-cos" for cosine, "-8x8" for the
    episodes of long epochs, "-h5" for their layer health sampled every 5 steps, "-bal1" for
    the growth decision balanced in training, "-cbc1" for the germinations cloned by the
    candidate features)."""
    episodes, epochs, simic = QUICK if quick else (EPISODES, EPISODE_EPOCHS, SIMIC_EPOCHS)
    long_episodes, (long_epochs, repeats) = QUICK_LONG if quick else (LONG_EPISODES, LONG_EPOCHS)
    layout = FEATURE_SCHEMA.rpartition("@")[2]
    schedule = "" if lr_schedule == "constant" else "-cos"
    health = f"-h{EpisodeConfig().health_activation_every}"  # episodes' health cadence (steps)
    balance = f"-bal{ACTION_BALANCE:g}" if ACTION_BALANCE else ""
    balance += f"-cbc{CANDIDATE_BC:g}" if CANDIDATE_BC else ""
    path = work_dir / (f"simic-digits-{episodes}ep-{epochs}e-{long_episodes}ep-{long_epochs}x{repeats}e-"
                       f"{simic}t-f{layout}-{GROWTH_RULE[:4]}{schedule}{health}{balance}.safetensors")
    if not path.exists():
        with tempfile.TemporaryDirectory(prefix="morpho-simic-") as tmp:
            collect(tmp, episodes, seed=0, config=EpisodeConfig(
                epochs=epochs, lr_schedule=lr_schedule, growth_rule=GROWTH_RULE))
            collect(tmp, long_episodes, seed=1, config=EpisodeConfig(
                epochs=long_epochs, epoch_repeats=repeats, lr_schedule=lr_schedule,
                growth_rule=GROWTH_RULE))
            result = train_policy(load_dataset(Path(tmp)), SimicConfig(
                epochs=simic, heuristic=episode_heuristic(GROWTH_RULE), action_balance=ACTION_BALANCE,
                candidate_bc_weight=CANDIDATE_BC))
            result.save(path)
    return path


class CountingPolicy:
    """Passes the GNN's decisions through, counting its own, its heuristic fallbacks and its
    widenings of the stream by the heuristic's rule (GnnPolicy._stream_widening)."""

    def __init__(self, inner: GnnPolicy) -> None:
        self.inner = inner
        self.name = inner.name
        self.own = self.fallbacks = self.stream_rule = 0
        self.own_actions: dict[str, int] = {}

    @property
    def version(self) -> str:
        return self.inner.version

    def decide(self, ctx: PolicyContext):
        decision = self.inner.decide(ctx)
        if FALLBACK_MARK in decision.rationale:
            self.fallbacks += 1
        elif STREAM_RULE_MARK in decision.rationale:
            self.stream_rule += 1
        else:
            self.own += 1
            kind = decision.WhichOneof("action") or "none"
            self.own_actions[kind] = self.own_actions.get(kind, 0) + 1
        return decision


def local_policy(work_dir: Path, quick: bool, lr_schedule: str
                 ) -> tuple[LocalPolicy, CountingPolicy, Path]:
    path = policy_file(work_dir, quick, lr_schedule)
    counting = CountingPolicy(GnnPolicy.load(str(path), heuristic=HeuristicPolicy(LOCAL_HEURISTIC)))
    return LocalPolicy(policy=counting), counting, path
