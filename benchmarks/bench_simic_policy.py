#!/usr/bin/env python
"""Simic's claim: a policy learned offline from recorded episodes, compared with the heuristic
it learned from, on held-out episodes of the example task (digits CNN, CPU).

Pipeline (all real): collect N training episodes (heuristic with randomized thresholds and
epsilon-exploration) -> train the GNN policy (BC + IQL) -> run the heuristic, the learned
policy and a never-growing baseline on M held-out seeds (disjoint from collection's) ->
print and write JSON (benchmarks/results/simic_policy.json): final validation accuracy,
parameters added, seeds germinated/fossilized/culled, per arm and as learned/heuristic ratios.

    .venv/bin/python benchmarks/bench_simic_policy.py [--train-episodes 20] [--eval-episodes 8]
                                                      [--lr-schedule constant|cosine]
                                                      [--growth-rule plateau|slowdown|first-epoch]
                                                      [--epoch-repeats K]

`--lr-schedule cosine` runs every episode, training and held-out, with the learning rate
decayed to zero on a cosine; `--growth-rule slowdown` records (and compares against) a
heuristic that also grows on diminishing returns (`first-epoch`: and on the first epoch's
pace, which fires on digits only when `--epoch-repeats` makes an epoch several passes over
the data, about 8). Each choice off its default is named in
the output file (simic_policy_cosine_slowdown.json) unless --out says.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from esper.cli.numbers import positive_int
from esper.tamiyo.simic.dataset import load_dataset
from esper.tamiyo.simic.episodes import (
    GROWTH_RULES,
    LR_SCHEDULES,
    EpisodeConfig,
    collect,
    episode_heuristic,
)
from esper.tamiyo.simic.evaluate import evaluate
from esper.tamiyo.simic.train import SimicConfig, train_policy

RESULTS = Path(__file__).resolve().parent / "results"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-episodes", type=positive_int, default=20)
    parser.add_argument("--eval-episodes", type=positive_int, default=8)
    parser.add_argument("--epochs", type=positive_int, default=SimicConfig().epochs, help="Simic training epochs")
    parser.add_argument("--data", default=None, help="reuse this episode directory instead of collecting")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant")
    parser.add_argument("--growth-rule", choices=GROWTH_RULES, default="plateau")
    parser.add_argument("--epoch-repeats", type=positive_int, default=1,
                        help="passes over the training data per episode epoch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    suffix = "".join(f"_{v}" for v, default in ((args.lr_schedule, "constant"),
                                                 (args.growth_rule, "plateau")) if v != default)
    suffix += f"_x{args.epoch_repeats}" if args.epoch_repeats != 1 else ""
    args.out = args.out or str(RESULTS / f"simic_policy{suffix}.json")
    episodes = EpisodeConfig(lr_schedule=args.lr_schedule, growth_rule=args.growth_rule,
                             epoch_repeats=args.epoch_repeats)

    work = Path(tempfile.mkdtemp(prefix="simic-bench-"))
    data = Path(args.data) if args.data else work / "episodes"
    t0 = time.perf_counter()
    if not args.data:
        collect(str(data), args.train_episodes, seed=0, config=episodes)
    t_collect = time.perf_counter() - t0
    dataset = load_dataset(data)
    t0 = time.perf_counter()
    result = train_policy(dataset, SimicConfig(epochs=args.epochs, heuristic=episode_heuristic(args.growth_rule)))
    t_train = time.perf_counter() - t0
    artifact = work / "policy.safetensors"
    result.save(artifact)
    t0 = time.perf_counter()
    report = evaluate(str(artifact), args.eval_episodes, config=episodes)
    t_eval = time.perf_counter() - t0

    arms = {name: arm["aggregate"] for name, arm in report["arms"].items()}
    h, lrn = arms["heuristic"], arms["learned"]
    summary = {
        "claim": "learned (Simic BC+IQL) vs heuristic on held-out digits episodes",
        "lr_schedule": args.lr_schedule,
        "growth_rule": args.growth_rule,
        "epoch_repeats": args.epoch_repeats,
        "train_episodes": len(dataset.episodes),
        "train_transitions": result.samples,
        "train_action_counts": result.tensors.counts,
        "policy_version": result.version,
        "final_bc_loss": result.history[-1].bc_loss,
        "arms": arms,
        "ratios_learned_over_heuristic": {
            "final_val_accuracy": _ratio(lrn["final_val_accuracy_mean"], h["final_val_accuracy_mean"]),
            "params_added": _ratio(lrn["params_added_mean"], h["params_added_mean"]),
        },
        "learned_own_decision_fraction": _ratio(lrn["own_decisions_total"], lrn["decisions_total"]),
        "seconds": {"collect": t_collect, "train": t_train, "evaluate": t_eval},
        "runs": {name: arm["runs"] for name, arm in report["arms"].items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    printable = {k: v for k, v in summary.items() if k != "runs"}
    print(json.dumps(printable, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
