"""Trainer: Tolaria owning the training loop (epochs, steps, evaluation, checkpoints).

    trainer = Trainer(model, lambda params: torch.optim.AdamW(params, lr=1e-3),
                      train_loader, val_loader, epochs=10)
    summary = trainer.fit()

The loop is the plain PyTorch one (zero_grad, forward, loss, backward, step), with
`session.step` after each step and `session.end_epoch` after validation; the optimizer
is built by the factory from the model's parameters, and seeds get their own groups. A
learning-rate scheduler, when given, is built by its factory from the optimizer and
stepped after every epoch (`scheduler_interval="epoch"`) or every optimizer step
(`"step"`; ReduceLROnPlateau is stepped per epoch with the validation loss whatever the
interval); seed groups follow its schedule (esper.tolaria.schedulers) and checkpoints
carry its state.
Under torch.distributed, pass the model wrapped in DistributedDataParallel and loaders
with a DistributedSampler (its epoch is set each epoch; rank 0 alone shows progress and
writes checkpoints). A host that declares a residual stream is rewrapped around the
session's model (`ddp_model`, keeping the DDP's device, dim, process group and reducer
switches), so that the stream can widen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from esper.kasmina.stream import declared
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.tolaria.api import attach
from esper.tolaria.checkpoint import load_checkpoint, save_checkpoint
from esper.tolaria.config import TolariaConfig
from esper.tolaria.distributed import ddp_model, ddp_options, unwrap_ddp
from esper.tolaria.progress import EpochProgress
from esper.tolaria.summary import RunSummary

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], LRScheduler | ReduceLROnPlateau]
SCHEDULER_INTERVALS = ("epoch", "step")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Trains `model` for `epochs` on `train_loader` (batches of (inputs, targets)),
    evaluating on `val_loader` after each epoch. Extra keyword arguments go to `attach`
    (slots, example_input, urza, blueprints, budget, kasmina...); a `budget` with
    `max_training_flops` and no `planned_steps` is given the run's (epochs x batches of a
    sized loader)."""

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, train_loader,
                 val_loader=None, *, loss_fn: LossFn = F.cross_entropy, epochs: int = 10,
                 policy="local", config: TolariaConfig | None = None,
                 device: str | torch.device = "cpu", checkpoint_path: str | None = None,
                 checkpoint_every: int | None = None, resume: str | None = None,
                 classification: bool = True, scheduler: SchedulerFactory | None = None,
                 scheduler_interval: str = "epoch", **attach_kwargs) -> None:
        if epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {epochs}")
        if scheduler is not None and not callable(scheduler):
            raise TypeError("scheduler must be a factory: optimizer -> LR scheduler")
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, got "
                             f"{scheduler_interval!r}")
        self.config = config or TolariaConfig()
        if checkpoint_every is not None and (
                checkpoint_every <= 0 or checkpoint_every % self.config.snapshot_every):
            raise ValueError(f"checkpoint_every ({checkpoint_every}) must be a positive multiple "
                             f"of snapshot_every ({self.config.snapshot_every}): checkpoints "
                             "are exact at safe points")
        if checkpoint_every and not checkpoint_path:
            raise ValueError("checkpoint_every needs a checkpoint_path")
        if not callable(optimizer):
            raise TypeError("optimizer must be a factory: params -> torch.optim.Optimizer")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer(self.model.parameters())
        self.train_loader, self.val_loader = train_loader, val_loader
        self.loss_fn = loss_fn
        self.epochs = epochs
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.classification = classification
        state = load_checkpoint(resume) if resume else None
        if attach_kwargs.get("budget") is not None:
            attach_kwargs["budget"] = _planned(attach_kwargs["budget"], epochs, _len(train_loader))
        # A DDP whose host declares a residual stream is rebuilt around the session's model
        # after attach: Tolaria then averages the stream, which DDP cannot follow as it widens.
        bare = unwrap_ddp(self.model)
        rewrap = bare is not self.model and declared(bare) is not None
        self.session = attach(bare if rewrap else self.model, self.optimizer, policy,
                              config=self.config, resume=state, **attach_kwargs)
        if rewrap:
            self.model = ddp_model(self.session, **ddp_options(self.model))
        loop = self.session.loop_state
        self.scheduler_interval = scheduler_interval
        self.scheduler = self._scheduler(scheduler, loop.get("scheduler"))
        self.epoch = int(loop.get("epoch", 0))
        self.batch_index = int(loop.get("batch", 0))
        self._epoch_rng = loop.get("epoch_rng")
        if "rng" in loop:
            self._set_rng(loop["rng"])  # after restore_session set the global RNGs
        self.history: list[dict] = []  # per epoch: train/val metrics

    def _scheduler(self, factory: SchedulerFactory | None, saved: dict | None):
        """The scheduler, built after `attach` (a resumed run's seed groups are in the
        optimizer by then) and, on resume, given its saved state. Building one steps it
        once (setting every group's rate to its first-epoch value): the resumed rates are
        put back, as they were when the checkpoint was taken."""
        if factory is None:
            if saved is not None:
                raise ValueError("the checkpoint has a learning-rate scheduler's state: pass "
                                 "the same scheduler factory to resume it")
            return None
        rates = [group["lr"] for group in self.optimizer.param_groups]
        scheduler = factory(self.optimizer)
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)) \
                or scheduler.optimizer is not self.optimizer:
            raise TypeError("scheduler factory must return a torch.optim.lr_scheduler "
                            "scheduler of the optimizer it is given")
        if saved is not None:
            scheduler.load_state_dict(saved)
            for group, lr in zip(self.optimizer.param_groups, rates):
                group["lr"] = lr
        return scheduler

    def _step_scheduler(self, val: dict) -> None:
        if isinstance(self.scheduler, ReduceLROnPlateau):
            metric = val.get("val_loss", math.nan)
            if not math.isfinite(metric):
                raise ValueError("ReduceLROnPlateau needs a finite validation loss each "
                                 "epoch: pass a val_loader")
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    # ---- the loop ------------------------------------------------------------------------
    def fit(self) -> RunSummary:
        """Train the remaining epochs, close the session (settling live seeds); returns
        its summary."""
        while self.epoch < self.epochs:
            self.train_epoch()
        self.session.close()
        return self.session.summary()

    def train_epoch(self) -> dict:
        """One epoch (resuming mid-epoch after a checkpoint taken inside one)."""
        batches = self._batches(self.batch_index)
        replicas = self.session.replicas
        bar = EpochProgress(_len(self.train_loader), self.epoch, self.epochs,
                            self.config.progress and (replicas is None or replicas.leader))
        losses, correct, seen = [], 0, 0
        total = _len(self.train_loader)
        for inputs, targets in batches:
            last = total is not None and self.batch_index + 1 == total
            loss, hits = self._train_step(inputs, targets, last)
            losses.append(loss.detach())
            if hits is not None:
                correct += int(hits)
                seen += int(targets.shape[0])
            self.batch_index += 1
            if self.checkpoint_every and not last \
                    and self.session.model.global_step % self.checkpoint_every == 0:
                self.save_checkpoint(self.checkpoint_path)
            bar.update(loss, correct if hits is not None else None, seen,
                       self.session.live_seed_count())
        val = self.evaluate()
        self.session.end_epoch(val)
        if self.scheduler is not None and (self.scheduler_interval == "epoch"
                                           or isinstance(self.scheduler, ReduceLROnPlateau)):
            self._step_scheduler(val)
        bar.finish(val, self.session.live_seed_count())
        record = {"epoch": self.epoch + 1,
                  "train_loss": float(torch.stack(losses).mean()) if losses else math.nan,
                  "train_accuracy": correct / seen if seen else math.nan, **val}
        self.history.append(record)
        self.epoch += 1
        self.batch_index = 0
        self._epoch_rng = None
        if self.checkpoint_path:
            self.save_checkpoint(self.checkpoint_path)
        return record

    def _batches(self, skip: int):
        """The epoch's batch iterator, past the first `skip` batches. The loader draws its
        shuffle from torch's RNG when the iterator is made, so a resumed epoch replays the
        RNG state of the interrupted epoch's start to get the same order."""
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # a DistributedSampler shuffles by epoch
            sampler.set_epoch(self.epoch)
        if not skip or self._epoch_rng is None:
            self._epoch_rng = self._rng()
            return iter(self.train_loader)
        now = self._rng()
        self._set_rng(self._epoch_rng)
        batches = iter(self.train_loader)
        for _ in range(skip):
            next(batches)  # the sampler draws its order on the first batch
        self._set_rng(now)
        return batches

    def _loader_generator(self) -> torch.Generator | None:
        return getattr(self.train_loader, "generator", None)

    def _rng(self) -> dict:
        """The RNG states that decide the data order: torch's and the loader's own."""
        gen = self._loader_generator()
        return {"torch": torch.get_rng_state(),
                "loader": gen.get_state() if gen is not None else torch.empty(0, dtype=torch.uint8)}

    def _set_rng(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        gen = self._loader_generator()
        if gen is not None and state["loader"].numel():
            gen.set_state(state["loader"])

    def _train_step(self, inputs, targets, last_in_epoch: bool = False):
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(inputs)
        loss = self.loss_fn(outputs, targets)
        loss.backward()
        self.optimizer.step()
        if self.scheduler_interval == "step" and self.scheduler is not None \
                and not isinstance(self.scheduler, ReduceLROnPlateau):  # it needs a metric
            self.scheduler.step()
        self.session.step(loss, outputs if self.classification else None,
                          targets if self.classification else None, last_in_epoch=last_in_epoch)
        hits = (outputs.detach().argmax(-1) == targets).sum() if self.classification else None
        return loss, hits

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (and accuracy for classification); empty without a val loader."""
        if self.val_loader is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        total, correct, count, labelled = 0.0, 0, 0, 0
        for inputs, targets in self.val_loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            outputs = self.model(inputs)
            n = int(targets.shape[0])
            total += float(self.loss_fn(outputs, targets)) * n
            if self.classification:
                correct += int((outputs.argmax(-1) == targets).sum())
                labelled += targets.numel()  # a sequence's every position is a prediction
            count += n
        self.model.train(was_training)
        out = {"val_loss": total / count if count else math.nan}
        if self.classification:
            out["val_accuracy"] = correct / labelled if labelled else math.nan
        return out

    # ---- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, path: str) -> None:
        """Save the session and the loop position; `path` may contain {step} and {epoch}.
        Exact (same losses on resume) at safe points: epoch ends and snapshot steps."""
        path = path.format(step=self.session.model.global_step, epoch=self.epoch)
        loop = {"epoch": self.epoch, "batch": self.batch_index, "rng": self._rng()}
        if self._epoch_rng is not None and self.batch_index:
            loop["epoch_rng"] = self._epoch_rng
        if self.scheduler is not None:
            loop["scheduler"] = self.scheduler.state_dict()
        save_checkpoint(path, self.session, loop)


def _planned(budget: ResourceBudget, epochs: int, batches: int | None) -> ResourceBudget:
    """A copy of `budget` with the run's planned steps where a training-FLOPs budget lacks
    them (the caller's message is left as it was)."""
    if budget.max_training_flops <= 0 or budget.planned_steps or not batches:
        return budget
    out = ResourceBudget()
    out.CopyFrom(budget)
    out.planned_steps = epochs * batches
    return out


def _len(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
