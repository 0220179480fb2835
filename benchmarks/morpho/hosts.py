"""The host families: an MLP and a small CNN on 28x28 images, each in a small size (the
host that grows), sized to a parameter count (the static controls of the grown size) and a
large size (the static reference). Every host is built right after torch.manual_seed(run
seed), so arms of a seed that share a size share the initialisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .text import CharTransformer

HOSTS = ("mlp", "cnn", "char")
# The hosts with a residual stream: the heuristic's stream_* settings act only on these.
STREAM_HOSTS = frozenset({"char"})
# The character-level transformer (width d_model; 2 blocks, 4 heads): small, ~3x large.
CHAR_SMALL, CHAR_LARGE = 32, 56
SIDE = 28
CLASSES = 10
# Small hosts with a real capacity bottleneck on Fashion-MNIST; large ones about 2.6x them.
MLP_SMALL = (32, 32)
MLP_LARGE = (80, 80)
CNN_SMALL = {"c1": 4, "c2": 8, "hidden": 16}
CNN_LARGE = {"c1": 8, "c2": 12, "hidden": 24}


class MLP(nn.Module):
    """flatten - fc1 - ReLU - fc2 - ReLU - fc3 (logits)."""

    def __init__(self, h1: int, h2: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(SIDE * SIDE, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(x)))


class CNN(nn.Module):
    """conv1 - ReLU - maxpool 2 - conv2 - ReLU - avgpool to 4x4 - fc1 - ReLU - fc2 (logits):
    Esper's example SmallCNN with a pool after the first conv, so the second conv runs at
    14x14 (the CPU budget of a many-seed experiment)."""

    def __init__(self, c1: int, c2: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * 16, hidden)
        self.fc2 = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 4)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp_params(h1: int, h2: int) -> int:
    return (SIDE * SIDE + 1) * h1 + (h1 + 1) * h2 + (h2 + 1) * CLASSES


def cnn_params(c1: int, c2: int, hidden: int) -> int:
    return (9 + 1) * c1 + (9 * c1 + 1) * c2 + (16 * c2 + 1) * hidden + (hidden + 1) * CLASSES


def small(host: str, vocab: int = 0, width: int | None = None) -> nn.Module:
    """The small host; `width`: the char host's stream as wide as a grown run ended."""
    if host == "char":
        return CharTransformer(vocab, width or CHAR_SMALL)
    return MLP(*MLP_SMALL) if host == "mlp" else CNN(**CNN_SMALL)


def large(host: str, vocab: int = 0) -> nn.Module:
    if host == "char":
        return CharTransformer(vocab, CHAR_LARGE)
    return MLP(*MLP_LARGE) if host == "mlp" else CNN(**CNN_LARGE)


def sized_widths(host: str, target: int, vocab: int = 0) -> dict:
    """The widths of the host family (all widths scaled together from the small host) whose
    parameter count is nearest `target`."""
    if host == "char":  # d_model, a multiple of the 4 heads
        with torch.random.fork_rng(devices=[]):  # sizing must not move the arm's init RNG
            best = min(range(4, 4 * CHAR_SMALL + 1, 4),
                       key=lambda d: abs(params(CharTransformer(vocab, d)) - target))
        return {"d_model": best}
    if host == "mlp":
        best = min(range(1, 4 * MLP_SMALL[0] + 1), key=lambda h: abs(mlp_params(h, h) - target))
        return {"h1": best, "h2": best}
    candidates = []
    for step in range(1, 400):
        s = step / 100
        w = {k: max(1, round(v * s)) for k, v in CNN_SMALL.items()}
        candidates.append((abs(cnn_params(**w) - target), w))
    return min(candidates, key=lambda c: c[0])[1]


def sized(host: str, target: int, vocab: int = 0) -> nn.Module:
    w = sized_widths(host, target, vocab)
    if host == "char":
        return CharTransformer(vocab, w["d_model"])
    return MLP(w["h1"], w["h2"]) if host == "mlp" else CNN(**w)
