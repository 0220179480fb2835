"""Fashion-MNIST for the experiment: all 60,000 training images, the last 10,000 of them as
the validation set every decision may look at, and the official 10,000-image test set for
the reported accuracy. The data order of an epoch comes from a generator seeded by the run
seed and the epoch, so every arm of a seed sees the same batches in the same order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from esper.tolaria.tasks import fashion_arrays

VALIDATION_SIZE = 10_000
# --quick: a subset that proves the harness runs (never a result).
QUICK_TRAIN, QUICK_VAL, QUICK_TEST = 2_000, 500, 500
EVAL_BATCH = 1_000


@dataclass
class Splits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    batch_size: int
    vocab_size: int = 0  # the character family's alphabet (0 for images)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.y_train) // self.batch_size)

    def train_batches(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's shuffled batches: the same for every arm of a seed."""
        gen = torch.Generator().manual_seed(seed * 1_000 + epoch)
        order = torch.randperm(len(self.y_train), generator=gen)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x_train[idx], self.y_train[idx]

    @staticmethod
    def batches(x: torch.Tensor, y: torch.Tensor, size: int = EVAL_BATCH):
        for start in range(0, len(y), size):
            yield x[start:start + size], y[start:start + size]

    def describe(self) -> dict:
        out = {"train": len(self.y_train), "validation": len(self.y_val), "test": len(self.y_test),
               "batch_size": self.batch_size}
        if self.vocab_size:
            out["vocab"] = self.vocab_size
        return out


def load(batch_size: int, quick: bool = False) -> Splits:
    """The splits (DatasetMissing, with the apt command, when the package is absent)."""
    xtr, ytr, xte, yte = (torch.from_numpy(a) for a in fashion_arrays())
    # Normalised with the training split's statistics (a fixed preprocessing for every arm).
    fit = xtr[:-VALIDATION_SIZE]
    mean, std = float(fit.mean()), float(fit.std())
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    x_train, y_train = xtr[:-VALIDATION_SIZE], ytr[:-VALIDATION_SIZE]
    x_val, y_val = xtr[-VALIDATION_SIZE:], ytr[-VALIDATION_SIZE:]
    if quick:
        x_train, y_train = x_train[:QUICK_TRAIN], y_train[:QUICK_TRAIN]
        x_val, y_val = x_val[:QUICK_VAL], y_val[:QUICK_VAL]
        xte, yte = xte[:QUICK_TEST], yte[:QUICK_TEST]
    return Splits(x_train.contiguous(), y_train.contiguous(), x_val.contiguous(),
                  y_val.contiguous(), xte.contiguous(), yte.contiguous(), batch_size)
