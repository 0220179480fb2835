"""A tqdm bar per epoch showing loss, accuracy and the live seed count."""

from __future__ import annotations

import math

# Refresh the bar's numbers every this many steps: reading the loss is a host sync.
REFRESH_EVERY = 10


class EpochProgress:
    """Wraps one epoch's batches; does nothing visible when disabled."""

    def __init__(self, total: int | None, epoch: int, epochs: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=True,
                             dynamic_ncols=True)
        self._steps = 0

    def update(self, loss, correct: int | None, seen: int, live_seeds: int) -> None:
        self._steps += 1
        if self._bar is None:
            return
        self._bar.update(1)
        if self._steps % REFRESH_EVERY == 0:
            value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
            self._bar.set_postfix(loss=f"{value:.4f}", acc=_pct(correct, seen),
                                  seeds=live_seeds, refresh=False)

    def finish(self, val: dict, live_seeds: int) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix(val_loss=f"{val.get('val_loss', math.nan):.4f}",
                              val_acc=f"{100 * val.get('val_accuracy', math.nan):.1f}%",
                              seeds=live_seeds)
        self._bar.close()


def _pct(correct: int | None, seen: int) -> str:
    return f"{100.0 * correct / seen:.1f}%" if correct is not None and seen else "-"
