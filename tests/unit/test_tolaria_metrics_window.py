"""Tolaria's metric window counts accuracy per target: one class per image, or one per
token of a sequence (logits (batch, tokens, vocab), targets (batch, tokens))."""

import math
import warnings

import torch

from esper.tolaria import metrics
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


def _window_accuracy(steps, window=None) -> float:
    window = window or MetricsWindow()
    for logits, targets in steps:
        window.observe(0.5, logits, targets)
    window.read()
    return window.last_train_accuracy


def test_held_steps_count_as_each_step_alone_would(monkeypatch) -> None:
    # CPU steps are counted together at the read: images, sequences of varying lengths
    # (which do not concatenate) and logits too large to hold (reduced at their step).
    g = torch.Generator().manual_seed(0)
    steps = [(torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g))
             for _ in range(3)]
    steps += [(torch.randn(2, n, 5, generator=g), torch.randint(0, 5, (2, n), generator=g))
              for n in (3, 4)]
    hits = sum(int((logits.argmax(-1) == targets).sum()) for logits, targets in steps)
    labelled = sum(targets.numel() for _, targets in steps)
    assert _window_accuracy(steps) == hits / labelled
    monkeypatch.setattr(metrics, "_HOLD_MAX_ELEMENTS", 35)  # some held, some not
    assert _window_accuracy(steps) == hits / labelled


def test_targets_changed_in_place_after_their_step_are_not_counted(caplog) -> None:
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # predicts classes 0 and 1
    buffer = torch.tensor([0, 1])  # a loop that refills one target buffer in place
    window = MetricsWindow()
    window.observe(0.5, logits, buffer)  # 2 hits, but its targets are overwritten next
    buffer.copy_(torch.tensor([0, 0]))
    window.observe(0.5, logits, buffer)  # 1 hit
    window.read()
    assert window.last_train_accuracy == 0.5  # the second step alone
    assert "changed in place" in caplog.text
    buffer.copy_(torch.tensor([0, 1]))
    window.observe(0.5, logits, buffer)  # 2 hits: from now on targets are copied
    buffer.copy_(torch.tensor([1, 1]))
    window.observe(0.5, logits, buffer)  # 1 hit
    window.read()
    assert window.last_train_accuracy == 0.75


def test_numpy_hits_match_torch_on_ties_nan_and_dtypes() -> None:
    # A window's float logits and integer targets are counted in NumPy: the same first
    # maximum as torch's argmax on ties, NaN counting as the maximum.
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        classes = 2 + trial % 4
        logits = torch.randint(0, 3, (40, classes), generator=g).float()  # many ties
        if trial % 2:
            logits[torch.rand(40, classes, generator=g) < 0.1] = float("nan")
        targets = torch.randint(0, classes, (40,), generator=g)
        if trial % 3 == 0:
            logits, targets = logits.double(), targets.int()
        want = torch.count_nonzero(torch.eq(logits.argmax(-1), targets)).item()
        assert metrics._numpy_hits(logits, targets) == want
        assert metrics._hits([logits[:20], logits[20:]], [targets[:20], targets[20:]], True) == want


def test_a_windows_cpu_losses_sum_as_float32_tensors_would() -> None:
    # In step order, each sum rounded to float32 once, bit for bit.
    values = [0.1 * i + 1e-3 for i in range(40)] + [1e7, 3.3e-4]
    window = MetricsWindow()
    expected = torch.zeros((), dtype=torch.float32)
    for v in values:
        window.observe(torch.tensor(v))
        expected = expected + torch.tensor(v, dtype=torch.float32)
    window.read()
    assert window.last_train_loss == expected.item() / len(values)


def test_losses_beyond_float32s_range_sum_to_inf_without_a_warning() -> None:
    window = MetricsWindow()
    for v in (3e38, 3e38, 1.0):
        window.observe(v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        window.read()
    assert window.last_train_loss == math.inf
