"""Training FLOPs of the host and of the seeds, estimated cheaply.

Method: the first training forward of the model lends one example (its first row, and
the batch size); whenever the model changes (a seed transition) that example is run once,
without gradients and in eval mode, under `torch.utils.flop_counter.FlopCounterMode`:
once through the host alone (seed hooks detached) and once with the seeds. A training step
then costs 3 forwards (forward + backward, the usual 1:2) of a batch: host FLOPs per step
= 3 x batch size x host FLOPs of one example; seed FLOPs per step = the same for the
difference. Steps are counted between changes, so nothing runs per step.

What it counts is what FlopCounterMode counts (matmuls, convolutions, attention: 2 FLOPs
per multiply-add), not elementwise ops; a seed merged into the host on fossilization costs
nothing more. Batches of another size than the first are counted at the first's size. A
model whose forward cannot be replayed this way (the measuring forward raises) reports no
FLOPs (None) rather than disturbing training.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)
# Forward + backward of a step, in forwards: the backward computes gradients with respect
# to both the inputs and the weights of each layer, about two forwards' work.
FORWARDS_PER_STEP = 3


class FlopMeter:
    """Host and seed training FLOPs of a MorphableModel, piecewise constant in steps."""

    def __init__(self, model) -> None:
        self.model = model
        self.example: tuple[tuple, dict] | None = None
        self.batch_size = 0
        self.per_step: tuple[float, float] | None = None  # (host, seeds) FLOPs of a step
        self.done = [0.0, 0.0]  # FLOPs of the steps before `since`
        self.since = 0
        self.failed = False
        self._handle = model.host.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict):
        """The first training forward's first example (then the hook removes itself)."""
        if not module.training:
            return None
        batch = _batch_size((args, kwargs))
        if batch:
            self.batch_size = batch
            self.example = _first_row((args, kwargs), batch)
        self.close()
        return None

    def changed(self, step: int) -> None:
        """The model's computation changed at `step` (a seed transition)."""
        if self.per_step is None:
            self.per_step = self._measure()  # the first measure also covers earlier steps
        self._advance(step)
        self.per_step = self._measure()

    def _rate(self) -> tuple[float, float] | None:
        """(host, seeds) FLOPs of a step now, measured on first need; None if unmeasurable."""
        if self.per_step is None:
            self.per_step = self._measure()
        return self.per_step

    def totals(self, step: int) -> tuple[float, float] | None:
        """(host, seed) training FLOPs of steps 1..`step`, or None if never measured."""
        rate = self._rate()
        if rate is None:
            return None
        host, seeds = rate
        return (self.done[0] + (step - self.since) * host,
                self.done[1] + (step - self.since) * seeds)

    def forward_per_example(self) -> float:
        """Forward FLOPs of one example through the model as it computes now (host and
        seeds), the scale a policy prices a kernel's FLOPs against; 0.0 before the first
        training forward or when the model cannot be measured."""
        rate = self._rate()
        return sum(rate) / (FORWARDS_PER_STEP * self.batch_size) if rate else 0.0

    def state_dict(self, step: int) -> dict:
        """The FLOPs of steps 1..`step` (a resumed run measures its own rate again)."""
        totals = self.totals(step)
        return {"done": list(totals) if totals else None, "since": step}

    def load_state_dict(self, state: dict) -> None:
        if state["done"] is None:
            return  # never measured before the checkpoint: estimated from the new rate
        self.done = [float(x) for x in state["done"]]
        self.since = int(state["since"])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _advance(self, step: int) -> None:
        if self.per_step is not None:
            self.done[0] += (step - self.since) * self.per_step[0]
            self.done[1] += (step - self.since) * self.per_step[1]
        self.since = step

    def _measure(self) -> tuple[float, float] | None:
        if self.example is None or self.failed:
            return None
        args, kwargs = self.example
        modes = {m: m.training for m in self.model.modules()}
        try:
            self.model.eval()  # no BatchNorm statistics updated, no dropout drawn
            # With gradients on: under no_grad an eval-mode nn.TransformerEncoderLayer
            # takes its fused fast path, which FlopCounterMode cannot see (a transformer's
            # blocks counted as 0 FLOPs); training steps never take it.
            with torch.enable_grad():
                with self.model._hooks_detached():
                    host = _forward_flops(self.model.host, args, kwargs)
                total = _forward_flops(self.model.host, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - an estimate must never stop training
            log.info("training FLOPs are not counted: the model's forward cannot be "
                     "replayed on its first example (%s: %s)", type(exc).__name__, exc)
            self.failed = True
            return None
        finally:
            for module, mode in modes.items():
                module.training = mode
        scale = FORWARDS_PER_STEP * self.batch_size
        return scale * host, scale * max(total - host, 0)


def _forward_flops(module: nn.Module, args: tuple, kwargs: dict) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*args, **kwargs)
    return float(counter.get_total_flops())


def _batch_size(tree) -> int:
    """Leading dimension of the first tensor in the call's arguments (0 if none)."""
    if isinstance(tree, torch.Tensor):
        return int(tree.shape[0]) if tree.dim() else 0
    if isinstance(tree, (tuple, list)):
        return next((n for n in map(_batch_size, tree) if n), 0)
    if isinstance(tree, dict):
        return next((n for n in map(_batch_size, tree.values()) if n), 0)
    return 0


def _first_row(tree, batch: int):
    """A detached copy of the first example: every tensor with the batch's leading size
    sliced to one row (a reference to a whole batch would keep its memory alive)."""
    if isinstance(tree, torch.Tensor):
        t = tree.detach()
        return t[:1].clone() if t.dim() and t.shape[0] == batch else t.clone()
    if isinstance(tree, tuple):
        return tuple(_first_row(x, batch) for x in tree)
    if isinstance(tree, list):
        return [_first_row(x, batch) for x in tree]
    if isinstance(tree, dict):
        return {k: _first_row(v, batch) for k, v in tree.items()}
    return tree
