"""The learned policy against the heuristic on held-out episodes of the example task.

Both policies run the same episodes (same seeds: same initialisation and data order, seeds
disjoint from collection's) with the same schedule thresholds (`episodes.episode_heuristic`
of the config's growth rule, which is also the heuristic arm);
a third arm that never grows gives the static model's numbers for scale. Per arm: final
validation accuracy, parameters added, seeds fossilized and culled, and for the learned
policy how many of its decisions were its own rather than heuristic fallbacks.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from esper.leyline.v1.control_pb2 import AdaptationDecision, WaitAction
from esper.policy.base import Policy
from esper.policy.context import PolicyContext
from esper.policy.decisions import make_decision
from esper.policy.heuristic import HeuristicPolicy
from esper.tamiyo.policies.gnn import STREAM_RULE_MARK, GnnConfig, GnnPolicy
from esper.tamiyo.simic.episodes import (
    HELD_OUT_SEED_BASE,
    EpisodeConfig,
    episode_heuristic,
    run_episode,
)

FALLBACK_MARK = "fell back to the heuristic"


class StaticPolicy:
    """Never grows: every decision is a wait (the static-model baseline)."""

    name = "static"
    version = "static@1"

    def decide(self, ctx: PolicyContext) -> AdaptationDecision:
        return make_decision(ctx, WaitAction(steps=1), policy_version=self.version, horizon_steps=1,
                             confidence=1.0, rationale="static baseline")


@dataclass
class ArmResult:
    name: str
    runs: list[dict] = field(default_factory=list)

    def aggregate(self) -> dict:
        def mean(key: str) -> float:
            return statistics.fmean(r[key] for r in self.runs)

        out = {
            "episodes": len(self.runs),
            "final_val_accuracy_mean": mean("final_val_accuracy"),
            "final_val_accuracy_stdev": statistics.pstdev(r["final_val_accuracy"] for r in self.runs),
            "params_added_mean": mean("params_added"),
            "seeds_germinated_total": sum(r["germinated"] for r in self.runs),
            "seeds_fossilized_total": sum(r["seeds_fossilized"] for r in self.runs),
            "seeds_culled_total": sum(r["seeds_culled"] for r in self.runs),
            "decisions_total": sum(r["decisions"] for r in self.runs),
            "own_decisions_total": sum(r["own_decisions"] for r in self.runs),
            "non_wait_decisions_total": sum(r["non_wait"] for r in self.runs),
        }
        return out


def _run_record(seed: int, policy: Policy, config: EpisodeConfig) -> dict:
    result = run_episode(policy, seed, config, run_id=f"eval-{policy.name}-{seed}")
    s = result.summary
    decisions = result.episode.of_kind("decision")
    return {
        "seed": seed,
        "final_val_accuracy": float(s["val_accuracy"]),
        "final_val_loss": float(s["val_loss"]),
        "params_added": int(s["params_after"]) - int(s["host_params_before"]),
        "seeds_fossilized": int(s["seeds_fossilized"]),
        "seeds_culled": int(s["seeds_culled"]),
        "germinated": sum(1 for d in decisions if d.WhichOneof("action") == "germinate"),
        "decisions": len(decisions),
        "own_decisions": sum(1 for d in decisions if FALLBACK_MARK not in d.rationale
                             and STREAM_RULE_MARK not in d.rationale),
        "non_wait": sum(1 for d in decisions if d.WhichOneof("action") != "wait"),
    }


def evaluate(artifact_path: str, episodes: int, *, config: EpisodeConfig | None = None,
             gnn_config: GnnConfig | None = None, seed_base: int = HELD_OUT_SEED_BASE,
             include_static: bool = True, progress=None) -> dict:
    """Run every arm on `episodes` held-out seeds; returns per-run records and aggregates."""
    cfg = config or EpisodeConfig()
    heuristic = episode_heuristic(cfg.growth_rule)
    arms = {
        "heuristic": lambda: HeuristicPolicy(heuristic),
        "learned": lambda: GnnPolicy.load(artifact_path, config=gnn_config or GnnConfig(),
                                           heuristic=HeuristicPolicy(heuristic)),
    }
    if include_static:
        arms["static"] = StaticPolicy
    results = {name: ArmResult(name) for name in arms}
    for i in range(episodes):
        seed = seed_base + i
        for name, make in arms.items():
            results[name].runs.append(_run_record(seed, make(), cfg))
            if progress is not None:
                progress(name, i, results[name].runs[-1])
    learned = GnnPolicy.load(artifact_path)
    return {
        "artifact": artifact_path,
        "policy_version": learned.version,
        "held_out_seeds": [seed_base + i for i in range(episodes)],
        "episode_config": dataclasses.asdict(cfg),
        "arms": {name: {"aggregate": arm.aggregate(), "runs": arm.runs} for name, arm in results.items()},
    }
