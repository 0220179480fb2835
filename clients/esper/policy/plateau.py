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
