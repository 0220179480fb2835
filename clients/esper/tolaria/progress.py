"""Per-epoch progress of the Trainer: a tqdm bar (loss, accuracy, live seeds) when stderr
is a terminal; otherwise — a file, a CI log, `nohup`, a notebook's captured output — one
plain line per epoch, since a bar written there is hundreds of carriage-return updates."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

# Refresh the bar's numbers every this many steps: reading the loss is a host sync.
REFRESH_EVERY = 10


class EpochProgress:
    """Wraps one epoch's batches; does nothing visible when disabled. `stream` (stderr by
    default) decides between the bar and the epoch line."""

    def __init__(self, total: int | None, epoch: int, epochs: int, enabled: bool,
                 stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._label = f"epoch {epoch + 1}/{epochs}"
        self._bar = None
        tqdm = _tqdm() if enabled and _is_terminal(self._stream) else None
        if tqdm is not None:
            self._bar = tqdm(total=total, desc=self._label, leave=True, dynamic_ncols=True,
                             file=self._stream)
        self._steps = 0
        self._last_loss = None  # kept as given: read once, at the epoch's end
        self._correct: int | None = None
        self._seen = 0
        self._began = time.perf_counter()

    def update(self, loss, correct: int | None, seen: int, live_seeds: int) -> None:
        self._steps += 1
        self._last_loss, self._correct, self._seen = loss, correct, seen
        if self._bar is None:
            return
        self._bar.update(1)
        if self._steps % REFRESH_EVERY == 0:
            self._bar.set_postfix(loss=f"{_value(loss):.4f}", acc=_pct(correct, seen),
                                  seeds=live_seeds, refresh=False)

    def finish(self, val: dict, live_seeds: int) -> None:
        val_loss = f"{val.get('val_loss', math.nan):.4f}"
        val_acc = f"{100 * val.get('val_accuracy', math.nan):.1f}%"
        if self._bar is not None:
            self._bar.set_postfix(val_loss=val_loss, val_acc=val_acc, seeds=live_seeds)
            self._bar.close()
        elif self._enabled:
            loss = f"{_value(self._last_loss):.4f}" if self._last_loss is not None else "-"
            print(f"{self._label}: {self._steps} steps in {time.perf_counter() - self._began:.1f} s"
                  f"  loss {loss}  acc {_pct(self._correct, self._seen)}"
                  f"  val_loss {val_loss}  val_acc {val_acc}  seeds {live_seeds}",
                  file=self._stream, flush=True)


def _tqdm():
    """tqdm's bar class, or None where tqdm is not installed (the epoch line then)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False


def _value(loss) -> float:
    return float(loss.detach()) if hasattr(loss, "detach") else float(loss)


def _pct(correct: int | None, seen: int) -> str:
    return f"{100.0 * correct / seen:.1f}%" if correct is not None and seen else "-"
