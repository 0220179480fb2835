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


def pace(val_losses: Sequence[float], window: int, start_loss: float = math.nan) -> float | None:
    """How fast the best validation loss improved over the last `window` epochs, as a
    fraction of its fastest pace (the most it improved over any `window` epochs so far):
    1.0 while learning is as fast as it has been, near 0 at diminishing returns. None with
    too little history (fewer than two windows after the first loss) or no gain yet. Bests
    rather than raw values, so one noisy epoch neither lowers nor raises it. A finite
    `start_loss` (RunHistory.start_loss) counts as the loss before the first epoch: the
    first epoch's gain then counts among the paces, and the pace is known one epoch
    earlier."""
    finite = [v for v in val_losses if math.isfinite(v)]
    if math.isfinite(start_loss):
        finite.insert(0, start_loss)
    if window < 1 or len(finite) < 2 * window + 1:
        return None
    best = [min(finite[:i + 1]) for i in range(len(finite))]
    gains = [best[j - window] - best[j] for j in range(window, len(best))]
    fastest = max(gains)
    return gains[-1] / fastest if fastest > 0 else None


def is_slowing(val_losses: Sequence[float], window: int, ratio: float,
               start_loss: float = math.nan) -> bool:
    """True when learning has slowed to diminishing returns: the best validation loss
    improved over the last `window` epochs by less than `ratio` times its fastest pace, the
    most it improved over any `window` epochs so far (`pace` below `ratio`). A model that
    keeps improving slowly (a capacity-bound host, whose loss never goes flat within the
    run) reaches this long before a plateau. The fastest pace rather than the first
    window's, so a slow first epoch (a warm-up, an unlucky batch order) does not hold
    growth back."""
    if ratio <= 0:
        return False
    now = pace(val_losses, window, start_loss)
    return now is not None and now < ratio


def first_epoch_pace(start_loss: float, points: Sequence[tuple[int, float]], end_step: int,
                     end_loss: float) -> float:
    """How fast the training loss still fell at the end of the first epoch: its gain over
    the epoch's second half as a fraction of its gain over the first half, from the run's
    start loss (RunHistory.start_loss), the (step, training loss) point of the epoch
    nearest its middle and the loss at its end (`end_step`, steps counted from 0). NaN
    when any of them is unknown or not finite, when no point lies within a quarter of the
    epoch of its middle (too few snapshots to tell the halves apart), or when the first
    half gained nothing. Validations come only at epoch ends, so the validation loss's
    pace is known after the second epoch at the earliest; the smoothed training loss
    within the first epoch says one epoch sooner whether its fast learning is over."""
    finite = [(s, v) for s, v in points if math.isfinite(v) and 0 < s < end_step]
    if not (math.isfinite(start_loss) and math.isfinite(end_loss) and finite and end_step > 0):
        return math.nan
    middle = end_step / 2
    step, mid_loss = min(finite, key=lambda p: abs(p[0] - middle))
    first_half = start_loss - mid_loss
    if abs(step - middle) > end_step / 4 or first_half <= 0:
        return math.nan
    return max(0.0, mid_loss - end_loss) / first_half
