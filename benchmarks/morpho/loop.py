"""The one training loop every arm runs: Adam, cross-entropy, the seed's batch order, the
run's learning-rate schedule (constant, or a cosine decay to zero over the run), a
validation pass after every epoch (the signal every decision may use; its FLOPs count as
training compute), and a test-set evaluation after every epoch for the curves (reporting
only: never seen by any decision, not counted)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Hashable

import torch
import torch.nn.functional as F
from torch import nn

from esper.tolaria.optim import restart_moments

from .data import Splits
from .flops import FlopMeter
from .hosts import params

LEARNING_RATE = 1e-3
# constant: Adam at LEARNING_RATE throughout. cosine: decayed to zero over the run's steps
# (a torch LambdaLR, which Esper's sessions keep seed groups in step with, as a user's).
LR_SCHEDULES = ("constant", "cosine")
# Called after each epoch's validation with (epoch, val_loss); may return a new optimizer
# (GroMo: the model grew) or None.
AfterEpoch = Callable[[int, float], "torch.optim.Optimizer | None"]


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) of `net` in eval mode; the mode is restored."""
    was_training = net.training
    net.eval()
    loss_sum, correct = 0.0, 0
    for xb, yb in Splits.batches(x, y):
        out = net(xb)
        loss_sum += float(F.cross_entropy(out.flatten(0, -2), yb.flatten(), reduction="sum"))
        correct += int((out.argmax(-1) == yb).sum())
    net.train(was_training)
    return loss_sum / y.numel(), correct / y.numel()  # per target (an image or a character)


def train(net: nn.Module, optimizer: torch.optim.Optimizer, data: Splits, *, seed: int,
          epochs: int, meter: FlopMeter, session=None, state_key: Callable[[], Hashable] | None = None,
          after_epoch: AfterEpoch | None = None, milestones: dict[str, float] | None = None,
          safe_point: Callable[[], bool] | None = None,
          finish: Callable[[], object] | None = None, lr_schedule: str = "constant",
          max_steps: int | None = None, restarts: Collection[int] = ()) -> dict:
    """Train `net` (with an Esper `session`, called the way its README says) and return the
    run's record: final test accuracy, FLOPs by kind, wall time, per-epoch curve, and the
    test accuracy at each FLOP milestone the run crosses (name -> budget).

    `safe_point()` says whether the coming `session.step` is a safe point (snapshot,
    decisions, gate probes): those calls and every `end_epoch` are counted in full. Other
    `session.step` calls only fold accumulators (norms and sums, which FlopCounterMode does
    not count in any arm), so they are charged nothing: entering the counter on every step
    would cost more wall time than the step.

    `finish()` (Esper: `session.close()`, which settles seeds still live) runs after the
    last epoch, counted in full; the final test accuracy is that of the model after it.

    `max_steps` ends the run after that many steps (the last epoch partial, still validated)
    and is the length the learning-rate schedule decays over: a run fitted to a budget.

    `restarts`: steps after which the optimizer's per-element state (Adam's moments)
    restarts at 0, its step count kept, as a widening of Esper's residual stream restarts
    it (the control for what the restart alone does)."""
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {lr_schedule!r}: choose from {', '.join(LR_SCHEDULES)}")
    key = state_key or (lambda: params(net))
    pending = dict(milestones or {})
    reached: dict[str, dict] = {}
    curve = []
    t0 = time.perf_counter()
    net.train()
    steps = data.steps_per_epoch
    total = min(max_steps or epochs * steps, epochs * steps)
    done = 0
    scheduler = _scheduler(optimizer, lr_schedule, total, done)
    for epoch in range(math.ceil(total / steps)):
        for i, (x, y) in enumerate(data.train_batches(seed, epoch)):
            if done == total:
                break
            def step(x=x, y=y):
                optimizer.zero_grad(set_to_none=True)
                out = net(x)
                # (batch, classes) for images; (batch, chars, vocab) for text
                loss = F.cross_entropy(out.flatten(0, -2), y.flatten())
                loss.backward()
                optimizer.step()
                return out, loss

            out, loss = meter.run("train", ("train", key()), len(y), step)
            done += 1
            if done in restarts:
                restart_moments(optimizer)
            if session is not None:
                last = i == steps - 1 or done == total
                if safe_point is None or safe_point():
                    with meter.counted("extra"):
                        session.step(loss, out, y, last_in_epoch=last)
                else:
                    session.step(loss, out, y, last_in_epoch=last)
            if scheduler is not None:
                scheduler.step()
            if pending:
                _milestones(pending, reached, meter, net, data, epoch + (i + 1) / steps)
        val_loss, val_acc = meter.run("validation", ("validation", key()), len(data.y_val),
                                      lambda: evaluate(net, data.x_val, data.y_val))
        if session is not None:
            with meter.counted("extra"):
                session.end_epoch({"val_loss": val_loss, "val_accuracy": val_acc})
        if after_epoch is not None:
            new = after_epoch(epoch, val_loss)
            if new is not None:
                optimizer = new
                scheduler = _scheduler(optimizer, lr_schedule, total, done)
        test_loss, test_acc = evaluate(net, data.x_test, data.y_test)
        curve.append({"epoch": epoch + 1, "flops": meter.total, "val_loss": val_loss,
                      "val_accuracy": val_acc, "test_accuracy": test_acc, "params": params(net)})
    if finish is not None:
        with meter.counted("extra"):
            finish()
    test_loss, test_acc = evaluate(net, data.x_test, data.y_test)
    for name in pending:  # budgets this run never reached: its end is the matched point
        reached[name] = {"test_accuracy": test_acc, "flops": meter.total, "epoch": total / steps,
                         "reached": False}
    return {"test_accuracy": test_acc, "test_loss": test_loss,
            "val_accuracy": curve[-1]["val_accuracy"] if curve else math.nan,
            "params": params(net), "flops": meter.to_dict(),
            "wall_s": time.perf_counter() - t0, "curve": curve, "milestones": reached}


def cosine_factor(step: int, total: int) -> float:
    """The learning-rate factor `step` steps into a cosine decay of `total` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def _scheduler(optimizer: torch.optim.Optimizer, lr_schedule: str, total: int, done: int):
    """The run's schedule on `optimizer` (a new one after GroMo grows), `done` steps in."""
    if lr_schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_factor(done + s, total))


def _milestones(pending: dict[str, float], reached: dict[str, dict], meter: FlopMeter,
                net: nn.Module, data: Splits, epoch: float) -> None:
    for name, budget in list(pending.items()):
        if meter.total >= budget:
            _, acc = evaluate(net, data.x_test, data.y_test)
            reached[name] = {"test_accuracy": acc, "flops": meter.total, "epoch": epoch,
                             "reached": True}
            del pending[name]
