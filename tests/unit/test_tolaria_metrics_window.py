"""Tolaria's metric window counts accuracy per target: one class per image, or one per
token of a sequence (logits (batch, tokens, vocab), targets (batch, tokens))."""

import torch

from esper.tolaria.metrics import MetricsWindow


def test_accuracy_is_per_target_and_throughput_per_sample() -> None:
    window = MetricsWindow()
    logits = torch.zeros(2, 3, 5)
    logits[..., 1] = 1.0  # every token predicts class 1
    targets = torch.tensor([[1, 1, 0], [1, 2, 3]])  # 3 of 6 tokens are class 1
    window.observe(torch.tensor(0.5), logits, targets)
    window.read()
    assert window.last_train_accuracy == 0.5
    images = MetricsWindow()
    images.observe(0.5, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    images.read()
    assert images.last_train_accuracy == 0.5
