#!/usr/bin/env python
"""Esper's core claim: a small host that grows seeds while it trains reaches (towards) the
accuracy of a bigger static host, with fewer parameters.

On the built-in example task (digits, the narrow default host), for each of N seeds, with
the same initialisation and data order for every arm of a seed, arms interleaved:

- small-static:  the narrow host, never growing (policy "none");
- small-grown:   the narrow host with Esper's defaults (`Trainer(policy="local")`: the
                 local heuristic, Kasmina's default gates and budget);
- medium-static: a static host with about the parameters the grown host ends with;
- wide-static:   the wide host (about 4x the narrow host's parameters).

Reported per arm: final validation accuracy mean and sd, parameters at the end, seeds
germinated / fossilized / culled, wall time; and ratios against small-static. Writes
benchmarks/results/bench_growth.json.

    .venv/bin/python benchmarks/bench_growth.py [--seeds 8] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from esper.cli.numbers import positive_int
from esper.leyline.v1.control_pb2 import AckStatus
from esper.tolaria import TolariaConfig, Trainer
from esper.tolaria.tasks import HOSTS, SmallCNN, load_task

RESULTS = Path(__file__).resolve().parent / "results"
# Seeds of the benchmark runs: far from Simic's collection seeds (0..) so no run shares an
# initialisation with a recorded episode.
SEED_BASE = 2_000_000
# A static host with about the parameters the grown narrow host ends with (~3.7k: narrow
# 2,570 + one or two fossilized residual blocks within Kasmina's 50% cap).
MEDIUM_HOST = {"c1": 6, "c2": 10, "hidden": 18}
# Adam at 3e-3, batch 64: the example task's training recipe (Simic episodes use it too).
LEARNING_RATE = 3e-3
BATCH_SIZE = 64
ARMS = ("small-static", "small-grown", "medium-static", "wide-static")


def _model(arm: str, side: int) -> torch.nn.Module:
    if arm == "medium-static":
        return SmallCNN(side, **MEDIUM_HOST)
    if arm == "wide-static":
        return SmallCNN(side, **HOSTS["wide"])
    return SmallCNN(side, **HOSTS["narrow"])


def run_arm(arm: str, seed: int, epochs: int, task_name: str) -> dict:
    task = load_task(task_name, batch_size=BATCH_SIZE, seed=seed)
    torch.manual_seed(seed)
    model = _model(arm, task.example_input.shape[-1])
    germinated = []
    t0 = time.perf_counter()
    trainer = Trainer(model, lambda p: torch.optim.Adam(p, lr=LEARNING_RATE), task.train_loader,
                      task.val_loader, epochs=epochs,
                      policy="local" if arm == "small-grown" else "none",
                      config=TolariaConfig(run_id=f"growth-{arm}-{seed}", progress=False),
                      example_input=task.example_input)
    trainer.session.ack_listeners.append(
        lambda a: a.status == AckStatus.ACK_STATUS_APPLIED and a.reason.startswith("germinated")
        and germinated.append(a.reason))
    summary = trainer.fit()
    return {
        "seed": seed, "final_val_accuracy": summary["val_accuracy"],
        "final_val_loss": summary["val_loss"], "params": summary["params_after"],
        "seeds_germinated": len(germinated), "seeds_fossilized": summary["seeds_fossilized"],
        "seeds_culled": summary["seeds_culled"], "germinations": germinated,
        "wall_s": time.perf_counter() - t0,
    }


def aggregate(runs: list[dict]) -> dict:
    acc = [r["final_val_accuracy"] for r in runs]
    return {
        "runs": len(runs),
        "final_val_accuracy_mean": statistics.fmean(acc),
        "final_val_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "params_mean": statistics.fmean(r["params"] for r in runs),
        "seeds_germinated_total": sum(r["seeds_germinated"] for r in runs),
        "seeds_fossilized_total": sum(r["seeds_fossilized"] for r in runs),
        "seeds_culled_total": sum(r["seeds_culled"] for r in runs),
        "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
    }


def paired(runs: dict[str, list[dict]], arm: str, base: str) -> dict:
    """Per-seed accuracy difference arm - base (same init and data order): mean, sd, wins."""
    diffs = [a["final_val_accuracy"] - b["final_val_accuracy"] for a, b in zip(runs[arm], runs[base], strict=True)]
    return {"mean": statistics.fmean(diffs), "sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=positive_int, default=8)
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--task", default="digits", choices=("digits", "fashion-mnist"))
    parser.add_argument("--out", default=str(RESULTS / "bench_growth.json"))
    args = parser.parse_args(argv)
    if args.seeds < 2:  # (--epochs >= 1: its type)
        parser.error("--seeds must be >= 2")
    torch.set_num_threads(1)  # tiny models on a shared machine: threads only contend

    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for i in range(args.seeds):
        for arm in ARMS:  # interleaved: machine load drifts affect every arm alike
            r = run_arm(arm, SEED_BASE + i, args.epochs, args.task)
            runs[arm].append(r)
            print(f"seed {i} {arm:14s} acc {r['final_val_accuracy']:.4f} params {r['params']:5d} "
                  f"germ/foss/cull {r['seeds_germinated']}/{r['seeds_fossilized']}/{r['seeds_culled']} "
                  f"{r['wall_s']:.1f}s", flush=True)

    arms = {arm: aggregate(rs) for arm, rs in runs.items()}
    base = arms["small-static"]
    summary = {
        "claim": "narrow host + Esper growth (local heuristic, defaults) vs static hosts",
        "task": args.task, "epochs": args.epochs, "seeds": args.seeds,
        "hosts": {"narrow": HOSTS["narrow"], "medium": MEDIUM_HOST, "wide": HOSTS["wide"]},
        "arms": arms,
        "paired_accuracy_gain_over_small_static": {
            arm: paired(runs, arm, "small-static") for arm in ARMS if arm != "small-static"},
        "ratios_over_small_static": {
            arm: {"params": a["params_mean"] / base["params_mean"],
                  "wall_time": a["wall_s_mean"] / base["wall_s_mean"]} for arm, a in arms.items()},
        "gap_closed_towards_wide": _gap(arms),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    print(f"wrote {out}")
    return 0


def _gap(arms: dict) -> float | None:
    """(grown - small) / (wide - small) in mean accuracy: 1 = the wide host's accuracy."""
    small = arms["small-static"]["final_val_accuracy_mean"]
    gap = arms["wide-static"]["final_val_accuracy_mean"] - small
    return (arms["small-grown"]["final_val_accuracy_mean"] - small) / gap if gap > 0 else None


if __name__ == "__main__":
    sys.exit(main())
