"""The training-metrics window between two snapshots, accumulated on the loss's device
(no host sync per step) and read out at safe points, plus the validation history
(best loss, plateau counter) kept across epochs."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from array import array

import numpy as np
import torch

from esper.leyline.v1.signals_pb2 import TrainingMetrics

log = logging.getLogger(__name__)

NAN = float("nan")
# CPU steps whose predictions wait to be counted together, at most (then they are).
_MAX_PENDING = 64
# Largest CPU logits tensor (elements) held whole until the read: a window of 20 steps of
# 128 x 10 logits is 100 KB, while a language model's logits (batch x tokens x vocab, up
# to gigabytes per window) are reduced to their argmax at their step.
_HOLD_MAX_ELEMENTS = 1 << 16
# Relative improvement of the validation loss that resets the plateau counter: smaller
# changes are epoch-to-epoch noise on small validation sets.
PLATEAU_MIN_DELTA = 0.01
# Time constant (in steps) of the smoothed train loss the seed gates see. A single
# snapshot window's mean loss is mostly batch noise: on the digits task, the mean of 5
# batches rose by more than 50% over 20 steps in 5% of windows with no seed at all, so a
# seed judged on it is culled by chance. An exponential average over ~50 steps brings that
# noise (99th percentile of the rise over 10-20 steps) to 3-5%, while a seed that really
# hurts still moves it within a few tens of steps.
LOSS_SMOOTHING_STEPS = 50.0


# A CPU step waiting to be counted, a plain tuple (a NamedTuple's Python-level __new__
# cost ~10 us per step in a training loop): its logits (or predictions), whether they are
# logits, their version counter at the step, its targets and their version counter.
_Held = tuple


class MetricsWindow:
    """Train loss/accuracy and throughput since the last read, plus validation state."""

    def __init__(self) -> None:
        # Window sums: a tensor on the loss's device, or a float (float32 roundings) for
        # CPU losses, plus CPU losses read but not yet added; hits as a device tensor or an
        # int, plus CPU (predictions, targets) not yet counted (their targets and samples
        # are counted with them).
        self._loss: torch.Tensor | None = None
        self._loss_host: float | None = None
        self._loss_values: list[float] = []
        self._correct: torch.Tensor | int | None = None
        self._held: list[_Held] = []
        # Whether CPU targets are copied at their step (once one was seen changed after it).
        self._copy_targets = False
        self._steps = 0
        self._samples = 0
        self._labelled = 0
        self._started = time.perf_counter()
        self.last_train_loss = NAN
        self.last_train_accuracy = NAN
        self.smoothed_train_loss = NAN
        self.val_loss = NAN
        self.val_accuracy = NAN
        self.best_val_loss = NAN
        self.plateau_epochs = 0
        self.grad_norm = 0.0
        self.step_time_ms = 0.0
        self.samples_per_second = 0.0

    def observe(self, loss: torch.Tensor | float, outputs: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> None:
        """One step's loss (and, when given, logits and class targets for accuracy).

        The window's sums are float32 for the loss and exact for the hits, as if each
        step's tensors were added on their device. On an accelerator they are (no host
        sync per step). On the CPU a read is no sync, and in a training loop each tensor
        operation costs far more than its arithmetic (~10-30 us with cold caches, against
        a 2-4 ms step), so the loss is read at once and added (in Python, with float32
        roundings) at the read, and a step's logits and targets are held, not reduced: the
        next read counts the window's hits, targets and samples in a few operations for
        all its steps (_count_held)."""
        if isinstance(loss, torch.Tensor) and not loss.is_cpu:  # (.device costs ~1 us)
            value = loss.detach()
            if value.dtype != torch.float32:
                value = value.float()
            if self._loss is None:
                self._loss = value.clone()
            else:
                self._loss.add_(value)
        else:
            self._loss_values.append(loss.item() if isinstance(loss, torch.Tensor)
                                     else float(loss))
        self._steps += 1
        if outputs is None or targets is None:
            return
        if outputs.is_cpu:
            self._hold(outputs, targets)  # targets and samples are counted with its hits
            return
        # argmax is not differentiable: its result records no graph, no detach needed.
        hits = torch.count_nonzero(torch.eq(outputs.argmax(dim=-1), targets))
        if isinstance(self._correct, torch.Tensor):
            self._correct.add_(hits)
        else:
            self._correct = hits if self._correct is None else hits + self._correct
        # Accuracy is per target (a class per image, or one per token of a sequence);
        # throughput counts samples (images or sequences).
        self._labelled += targets.numel()
        self._samples += targets.shape[0]

    def _hold(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep a CPU step's logits (detached: no graph is held) and targets until the
        next read, with their version counters. A tensor changed in place after its step
        (a reused target buffer) is seen at the read: its step is not counted, and from
        then on each step's prediction and a copy of its targets are taken at the step.
        Large logits (a language model's) are reduced to their argmax at the step, so a
        window holds little memory."""
        if self._copy_targets or outputs.numel() > _HOLD_MAX_ELEMENTS:
            predicted = outputs.argmax(dim=-1)
            if self._copy_targets:
                targets = targets.clone()
            held = (predicted, False, predicted._version, targets, targets._version)
        else:
            logits = outputs.detach()
            held = (logits, True, logits._version, targets, targets._version)
        self._held.append(held)
        if len(self._held) >= _MAX_PENDING:
            self._count_held()

    def _count_held(self) -> None:
        """Fold the held CPU steps into the hit, target and sample counts: one pass over
        them (each Python loop over a window's steps costs ~20 us at a safe point, cold
        caches), then a few operations for the whole window (held logits and predictions
        each concatenated)."""
        if not self._held:
            return
        held, self._held = self._held, []
        groups: dict[bool, tuple[list, list]] = {True: ([], []), False: ([], [])}
        samples = labelled = changed = 0
        for outputs, logits, outputs_version, targets, targets_version in held:
            samples += targets.shape[0]
            if outputs._version != outputs_version or targets._version != targets_version:
                changed += 1  # its targets are gone: it leaves the accuracy count
                continue
            labelled += targets.numel()
            group = groups[logits]
            group[0].append(outputs)
            group[1].append(targets)
        self._samples += samples
        self._labelled += labelled
        if changed:
            self._changed_in_place()
        if changed == len(held):
            return
        hits = sum(_hits(outputs, targets, logits)
                   for logits, (outputs, targets) in groups.items() if outputs)
        self._correct = hits if self._correct is None else hits + self._correct

    def _changed_in_place(self) -> None:
        """Some held step's tensors changed after it: later steps copy their targets."""
        if not self._copy_targets:
            log.warning("training targets or logits were changed in place after "
                        "session.step(); from now on each step's targets are copied")
        self._copy_targets = True

    def _window_loss(self) -> float:
        """The float32 sum of the window's losses."""
        self._add_loss_values()
        if self._loss is None:
            return self._loss_host
        if self._loss_host is None:
            return float(self._loss)
        return _round32(float(self._loss) + self._loss_host)

    def _add_loss_values(self) -> None:
        """Add the CPU losses read since the last call to the float32 sum, one by one as
        float32 tensors would add them (NumPy's accumulate adds in order, in float32, each
        sum rounded once: a window's losses in one call rather than one Python rounding
        each)."""
        if not self._loss_values:
            return
        values = self._loss_values if self._loss_host is None \
            else [self._loss_host, *self._loss_values]
        # Beyond float32's range the sum is inf, as a tensor's would be, silently (an
        # errstate costs more than the sum, so only where an overflow is possible).
        quiet = np.errstate(over="ignore") if max(map(abs, values)) * len(values) >= _NO_OVERFLOW \
            else contextlib.nullcontext()
        with quiet:
            self._loss_host = float(np.add.accumulate(np.array(values, dtype=np.float32))[-1])
        self._loss_values = []

    def add_samples(self, n: int) -> None:
        self._samples += n

    @property
    def pending_steps(self) -> int:
        return self._steps

    def window_sums(self) -> list[float]:
        """The open window's sums: [loss, hits, labelled, samples] (one sync), for
        reducing them across the ranks of a distributed run (esper.tolaria.distributed)."""
        self._count_held()
        return [self._window_loss() if self._steps else 0.0,
                float(self._correct) if self._correct is not None else 0.0,
                float(self._labelled), float(self._samples)]

    def set_window_sums(self, loss: float, hits: float, labelled: float, samples: float) -> None:
        """Replace the open window's sums (with the reduced ones of every rank); the step
        count stays: every rank took the same steps."""
        self._count_held()
        self._loss, self._loss_host, self._loss_values = None, (loss if self._steps else None), []
        self._correct = int(round(hits)) if labelled else None
        self._labelled, self._samples = int(round(labelled)), int(round(samples))

    def read(self) -> None:
        """Close the window (one sync): update last_train_* and throughput."""
        if self._steps == 0:
            return
        now = time.perf_counter()
        elapsed = max(now - self._started, 1e-9)
        self._count_held()
        self.last_train_loss = self._window_loss() / self._steps
        self._smooth(self.last_train_loss, self._steps)
        if self._labelled:
            self.last_train_accuracy = float(self._correct) / self._labelled
        self.step_time_ms = 1000.0 * elapsed / self._steps
        self.samples_per_second = self._samples / elapsed
        self._loss = self._loss_host = self._correct = None
        self._loss_values = []
        self._steps = self._samples = self._labelled = 0
        self._started = now

    def _smooth(self, window_loss: float, steps: int) -> None:
        """Fold a window's mean loss into the exponential average (weight by its steps)."""
        if not math.isfinite(window_loss):
            return
        if not math.isfinite(self.smoothed_train_loss):
            self.smoothed_train_loss = window_loss
            return
        weight = 1.0 - math.exp(-steps / LOSS_SMOOTHING_STEPS)
        self.smoothed_train_loss += weight * (window_loss - self.smoothed_train_loss)

    def end_epoch(self, val_loss: float, val_accuracy: float) -> None:
        """Fold in a finished epoch's validation metrics (NaN when not evaluated)."""
        self.val_loss, self.val_accuracy = val_loss, val_accuracy
        if not math.isfinite(val_loss):
            return
        best = self.best_val_loss
        if math.isnan(best) or val_loss < best * (1.0 - PLATEAU_MIN_DELTA):
            self.plateau_epochs = 0
        else:
            self.plateau_epochs += 1
        self.best_val_loss = val_loss if math.isnan(best) else min(best, val_loss)

    def to_proto(self, learning_rate: float) -> TrainingMetrics:
        return TrainingMetrics(
            train_loss=self.last_train_loss, val_loss=self.val_loss,
            train_accuracy=_or_zero(self.last_train_accuracy), val_accuracy=_or_zero(self.val_accuracy),
            learning_rate=learning_rate, grad_norm=self.grad_norm,
            samples_per_second=self.samples_per_second, plateau_epochs=self.plateau_epochs,
            best_val_loss=self.best_val_loss,
        )

    def state_dict(self) -> dict:
        """Plain numbers, the open window's partial sums included (so a resumed run sees
        the same window means as an uninterrupted one)."""
        state = {k: getattr(self, k) for k in _SAVED}
        state["smoothed_train_loss"] = self.smoothed_train_loss
        self._count_held()
        state["window"] = {
            "loss": self._window_loss() if self._steps else None,
            "correct": int(self._correct) if self._correct is not None else None,
            "steps": self._steps, "samples": self._samples, "labelled": self._labelled,
        }
        return state

    def load_state_dict(self, state: dict) -> None:
        for key in _SAVED:
            setattr(self, key, state[key])
        # Checkpoints from before smoothing existed restart the average from the next window.
        self.smoothed_train_loss = state.get("smoothed_train_loss", NAN)
        w = state["window"]
        self._loss, self._held, self._loss_values = None, [], []
        self._loss_host = _round32(w["loss"]) if w["loss"] is not None else None
        self._correct = int(w["correct"]) if w["correct"] is not None else None
        self._steps, self._samples, self._labelled = w["steps"], w["samples"], w["labelled"]


_SAVED = ("last_train_loss", "last_train_accuracy", "val_loss", "val_accuracy", "best_val_loss",
          "plateau_epochs", "grad_norm")


# A float32 sum of values whose magnitudes add up to less than this cannot overflow.
_NO_OVERFLOW = 3e38


def _round32(x: float) -> float:
    """x rounded to float32, as Tensor.float() rounds (inf beyond its range). The float32
    sum of two float32 values is this rounding of their exact float64 sum, so sums taken
    this way equal those of float32 tensors bit for bit."""
    return array("f", (x,))[0]


def _hits(outputs: list[torch.Tensor], targets: list[torch.Tensor], logits: bool) -> int:
    """Correct predictions over the steps' outputs (logits, or predictions when not
    `logits`) and targets: concatenated when every step's prediction has its targets'
    shape, else step by step, broadcasting as each step's comparison would."""
    def predictions(x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=-1) if logits else x

    shapes = [o.shape[:-1] if logits else o.shape for o in outputs]
    if all(s == t.shape for s, t in zip(shapes, targets)):
        try:
            outputs_cat, targets_cat = torch.cat(outputs), torch.cat(targets)
        except RuntimeError:  # shapes that do not concatenate (e.g. varying lengths)
            pass
        else:
            if logits and outputs_cat.dtype in _NUMPY_LOGITS \
                    and targets_cat.dtype in _NUMPY_TARGETS:
                return _numpy_hits(outputs_cat, targets_cat)
            return torch.count_nonzero(
                torch.eq(predictions(outputs_cat), targets_cat)).item()
    return sum(torch.count_nonzero(torch.eq(predictions(o), t)).item()
               for o, t in zip(outputs, targets))


# A window's CPU logits and class targets of these dtypes are counted in NumPy.
_NUMPY_LOGITS = (torch.float32, torch.float64)
_NUMPY_TARGETS = (torch.int64, torch.int32)


def _numpy_hits(logits: torch.Tensor, targets: torch.Tensor) -> int:
    """Hits of a window's concatenated CPU logits: NumPy's argmax, == and count over
    views cost about half of torch's argmax, eq, count_nonzero and item at a safe point
    (cold caches). Both take the first maximum, a NaN counting as the maximum."""
    predicted = logits.numpy().argmax(axis=-1)
    return int(np.count_nonzero(predicted == targets.numpy()))


def _or_zero(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def global_grad_norm(squares: dict[int, float]) -> float:
    """L2 norm of every gradient from their squared norms (esper.kasmina.health's
    grad_squares: one sync, at snapshot steps only)."""
    if not squares:
        return 0.0
    norm = math.sqrt(math.fsum(squares.values()))
    return norm if math.isfinite(norm) else float("inf")
