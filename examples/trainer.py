"""Let Tolaria own the loop: the Trainer (epochs, evaluation, progress bar, checkpoints).

    python examples/trainer.py [--epochs N] [--checkpoint PATH] [--no-progress]

The built-in digits task (a small CNN on scikit-learn's 8x8 digits) with the in-process
heuristic policy; `--checkpoint` saves after every epoch, and running again with
`--resume PATH` continues the same run.
"""

from __future__ import annotations

import argparse

import torch

from esper.tolaria import RunSummary, TolariaConfig, Trainer
from esper.tolaria.tasks import load_task


def main(argv: list[str] | None = None) -> RunSummary:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    task = load_task("digits", batch_size=64, seed=0)
    trainer = Trainer(
        task.model,
        lambda params: torch.optim.Adam(params, lr=1e-2),   # optimizer factory
        task.train_loader, task.val_loader,
        epochs=args.epochs, example_input=task.example_input,
        config=TolariaConfig(progress=not args.no_progress),
        checkpoint_path=args.checkpoint, resume=args.resume,
    )
    summary = trainer.fit()
    print(summary)
    return summary


if __name__ == "__main__":
    main()
