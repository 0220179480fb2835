"""A PNG of one run: validation accuracy and parameters per epoch with the seed events
marked (germinated, fossilized, culled), and optionally a baseline run (e.g. the same host
trained static) drawn beside it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from esper.leyline.lifecycle import stage_name
from esper.leyline.v1 import lifecycle_pb2, nissa_pb2

# Colours of the seed events drawn on the curves.
STAGE_COLOURS = {
    lifecycle_pb2.SEED_STAGE_GERMINATED: "tab:green",
    lifecycle_pb2.SEED_STAGE_FOSSILIZED: "tab:blue",
    lifecycle_pb2.SEED_STAGE_CULLED: "tab:red",
}


def plot_run(summary: nissa_pb2.GetRunSummaryResponse, output: Path,
             baseline: nissa_pb2.GetRunSummaryResponse | None = None) -> None:
    fig, (acc_ax, params_ax) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    run_id = summary.run.run_id
    epochs = [p.epoch for p in summary.epochs]
    acc_ax.plot(epochs, [100 * p.val_accuracy for p in summary.epochs], marker="o",
                label=f"{run_id} (grown)" if baseline is not None else run_id)
    params_ax.plot(epochs, [p.total_params for p in summary.epochs], marker="o",
                   label=f"{run_id} total")
    params_ax.plot(epochs, [p.seed_params for p in summary.epochs], linestyle=":",
                   label=f"{run_id} in seeds (not merged into the host)")
    if baseline is not None:
        other = [p.epoch for p in baseline.epochs]
        acc_ax.plot(other, [100 * p.val_accuracy for p in baseline.epochs], marker="s",
                    color="tab:gray", label=f"{baseline.run.run_id} (baseline)")
        params_ax.plot(other, [p.total_params for p in baseline.epochs], marker="s",
                       color="tab:gray", label=f"{baseline.run.run_id} total")
    _mark_seed_events(summary, (acc_ax, params_ax))
    acc_ax.set_ylabel("validation accuracy (%)")
    params_ax.set_ylabel("parameters")
    params_ax.set_xlabel("epoch")
    acc_ax.set_title(f"run {run_id}: seed events marked")
    for ax in (acc_ax, params_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(output, format="png", dpi=100)
    plt.close(fig)


def _mark_seed_events(summary: nissa_pb2.GetRunSummaryResponse, axes) -> None:
    """A dashed line per germination, fossilization and cull, at its (fractional) epoch."""
    to_epoch = _step_to_epoch(summary)
    marked: set[int] = set()
    for t in summary.seed_timeline:
        colour = STAGE_COLOURS.get(t.to_stage)
        if colour is None:
            continue
        label = None
        if t.to_stage not in marked:
            label = stage_name(t.to_stage).lower()
            marked.add(t.to_stage)
        for ax in axes:
            ax.axvline(to_epoch(t.step), color=colour, linestyle="--", alpha=0.6,
                       label=label if ax is axes[0] else None)


def _step_to_epoch(summary: nissa_pb2.GetRunSummaryResponse):
    """Steps to fractional epochs, from the steps at which the recorded epochs ended."""
    steps = [0.0] + [float(p.step) for p in summary.epochs]
    epochs = [0.0] + [float(p.epoch) for p in summary.epochs]
    return lambda step: float(np.interp(float(step), steps, epochs))
