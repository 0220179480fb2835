"""A PNG of one run: loss and accuracy per epoch with seed events marked, params over time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from esper.leyline.v1 import lifecycle_pb2, nissa_pb2

# Colours of the seed events drawn on the curves.
STAGE_COLOURS = {
    lifecycle_pb2.SEED_STAGE_GERMINATED: "tab:green",
    lifecycle_pb2.SEED_STAGE_FOSSILIZED: "tab:blue",
    lifecycle_pb2.SEED_STAGE_CULLED: "tab:red",
}


def plot_run(summary: nissa_pb2.GetRunSummaryResponse, output: Path) -> None:
    steps = [p.step for p in summary.epochs]
    fig, (loss_ax, acc_ax, params_ax) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    loss_ax.plot(steps, [p.train_loss for p in summary.epochs], label="train loss")
    loss_ax.plot(steps, [p.val_loss for p in summary.epochs], label="val loss")
    acc_ax.plot(steps, [p.train_accuracy for p in summary.epochs], label="train accuracy")
    acc_ax.plot(steps, [p.val_accuracy for p in summary.epochs], label="val accuracy")
    params_ax.plot(steps, [p.total_params for p in summary.epochs], label="total params")
    params_ax.plot(steps, [p.seed_params for p in summary.epochs], label="seed params")
    marked: set[int] = set()
    for t in summary.seed_timeline:
        colour = STAGE_COLOURS.get(t.to_stage)
        if colour is None:
            continue
        label = None
        if t.to_stage not in marked:
            label = lifecycle_pb2.SeedStage.Name(t.to_stage).removeprefix("SEED_STAGE_").lower()
            marked.add(t.to_stage)
        for ax in (loss_ax, acc_ax, params_ax):
            ax.axvline(
                t.step,
                color=colour,
                linestyle="--",
                alpha=0.6,
                label=label if ax is loss_ax else None,
            )
    loss_ax.set_title(f"run {summary.run.run_id}")
    params_ax.set_xlabel("step")
    for ax in (loss_ax, acc_ax, params_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(output, format="png", dpi=100)
    plt.close(fig)
