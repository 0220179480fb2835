"""Plateau detection on the validation loss."""

from __future__ import annotations

import math
from collections.abc import Sequence


def is_plateau(
    val_losses: Sequence[float], patience: int, min_delta: float, counter: int = 0
) -> bool:
    """True when the best of the last `patience` epochs did not beat the best before them
    by at least `min_delta` (relative to that best). With too little history, the process's
    own plateau counter (`counter`, epochs since the last improvement) decides."""
    finite = [v for v in val_losses if math.isfinite(v)]
    if len(finite) <= patience:
        return counter >= patience > 0
    best_before = min(finite[:-patience])
    best_recent = min(finite[-patience:])
    return best_recent > best_before - min_delta * abs(best_before)


def is_slowing(val_losses: Sequence[float], window: int, ratio: float) -> bool:
    """True when learning has slowed to diminishing returns: the best validation loss
    improved over the last `window` epochs by less than `ratio` times its fastest pace, the
    most it improved over any `window` epochs so far. A model that keeps improving slowly (a
    capacity-bound host, whose loss never goes flat within the run) reaches this long before
    a plateau. Bests rather than raw values, so one noisy epoch neither fires nor blocks it;
    the fastest pace rather than the first window's, so a slow first epoch (a warm-up, an
    unlucky batch order) does not hold growth back."""
    finite = [v for v in val_losses if math.isfinite(v)]
    if window < 1 or ratio <= 0 or len(finite) < 2 * window + 1:
        return False
    best = [min(finite[:i + 1]) for i in range(len(finite))]
    gains = [best[j - window] - best[j] for j in range(window, len(best))]
    return max(gains) > 0 and gains[-1] < ratio * max(gains)
