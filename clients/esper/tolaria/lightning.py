"""PyTorch Lightning: grow seeds in a LightningModule trained by a Lightning `Trainer`.

    from esper.tolaria.lightning import EsperCallback
    esper_cb = EsperCallback("local", module="net")      # attach() keywords go through
    trainer = pytorch_lightning.Trainer(max_epochs=20, callbacks=[esper_cb])
    trainer.fit(lit_module, train_loader, val_loader)
    print(esper_cb.session.summary())

The callback drives the hook API (`esper.tolaria.attach`) from Lightning's hooks:

- `on_fit_start` (the module is on its device, `configure_optimizers` has run): attach a
  session to the LightningModule (`module=None`) or to one of its submodules
  (`module="net"`: slot names are then relative to it) and to `trainer.optimizers[optimizer]`
  (the first by default), which receives the seeds' param groups. Lightning steps that
  same optimizer object, so seeds added mid-fit are trained (gradient clipping and mixed
  precision see their groups too). Without `example_input=`, the module's `example_input_array`
  (when `module=None`, and it is a tensor or a tuple of positional arguments) gives the
  real activation shapes.
- `on_train_batch_end`: `session.step(loss, outputs, targets)` once per batch in which an
  optimizer stepped (accumulated batches are skipped, so the session's step count is
  `trainer.global_step` with one optimizer). The loss is what `training_step` returned (a
  tensor, or the "loss" of a dict; Lightning's division by `accumulate_grad_batches` is
  undone); a dict may also carry the logits and class targets under `outputs_key`
  ("outputs") and `targets_key` ("targets") for the train accuracy.
- end of each training epoch: `session.end_epoch({"val_loss": ..., "val_accuracy": ...})`
  with the values of `trainer.callback_metrics[val_loss_key]` / `[val_accuracy_key]`
  ("val_loss", "val_accuracy": log them with `self.log` in `validation_step`). It runs in
  `on_validation_end` when the validation closes the epoch, so a ModelCheckpoint saving
  there (it runs after this callback) sees the epoch's decisions applied; otherwise in
  `on_train_epoch_end` (a metric not logged is NaN to the session). The sanity-check
  validation is ignored; a mid-epoch validation (`val_check_interval < 1`) only updates
  the metrics the next epoch end reports.
- `on_fit_end`: `session.close()` (pending decisions expire, live seeds are settled: the
  in-memory model is final; checkpoints taken earlier keep them live). `on_exception`
  (a crash, Ctrl-C): `session.close(expire_pending=False)`, as for a run to be resumed.

Checkpoints. Lightning's checkpoint keeps the LightningModule's state_dict (host weights,
with merged fossils folded in) and the optimizer state, whose seed param groups only fit a
model that has the same seeds. So the callback stores the whole Tolaria session state
(`esper.tolaria.checkpoint.session_state`: seeds, their kernels, seed param groups, pending
decisions, acks, metrics, policy and RNG state) in its own callback state, and
`trainer.fit(..., ckpt_path=...)` with a fresh EsperCallback rebuilds the seeds before
Lightning reloads the optimizer. Not supported: `save_weights_only=True` checkpoints, or
`LightningModule.load_from_checkpoint` alone, keep no seed that is not merged into the host
weights (use `esper_cb.session.model.unwrap()` for the grown model as a plain module);
multi-process strategies (DDP, FSDP): seeds are not part of the wrapped module, so their
gradients would not be synchronised; the callback refuses world sizes above 1.

LR schedulers from `configure_optimizers` step the same optimizer, and Tolaria keeps every
scheduler of that optimizer in step with the seed groups (esper.tolaria.schedulers): a seed
group follows the host's schedule unless its decision set its own rate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from esper.tolaria.api import attach
from esper.tolaria.checkpoint import session_state
from esper.tolaria.session import TolariaSession


def _callback_bases() -> tuple[type, ...]:
    """Lightning's Callback classes that are installed: `pytorch_lightning` (what the
    `esper[lightning]` extra installs) and/or `lightning.pytorch` (the unified package), so
    the callback is accepted by either package's Trainer."""
    bases = []
    try:
        import pytorch_lightning

        bases.append(pytorch_lightning.Callback)
    except ImportError:
        pass
    try:
        import lightning.pytorch

        if lightning.pytorch.Callback not in bases:
            bases.append(lightning.pytorch.Callback)
    except ImportError:
        pass
    if not bases:
        raise ImportError("esper.tolaria.lightning needs PyTorch Lightning 2.x: "
                          "pip install 'esper[lightning]'")
    return tuple(bases)


class EsperCallback(*_callback_bases()):
    """Grows seeds in a Lightning fit. `policy` and every other keyword (slots,
    example_input, kasmina, config, urza, blueprints, budget...) go to
    `esper.tolaria.attach`. `module`: the attribute name of the submodule to wrap (None:
    the LightningModule itself). `optimizer`: index in `trainer.optimizers` of the one that
    receives the seed param groups. The session is `self.session` once the fit starts."""

    def __init__(self, policy: Any = "local", *, module: str | None = None, optimizer: int = 0,
                 val_loss_key: str = "val_loss", val_accuracy_key: str = "val_accuracy",
                 outputs_key: str = "outputs", targets_key: str = "targets",
                 **attach_kwargs: Any) -> None:
        super().__init__()
        if optimizer < 0:
            raise ValueError(f"optimizer must be an index >= 0, got {optimizer}")
        self.policy = policy
        self.module = module
        self.optimizer_index = optimizer
        self.val_loss_key, self.val_accuracy_key = val_loss_key, val_accuracy_key
        self.outputs_key, self.targets_key = outputs_key, targets_key
        self.attach_kwargs = attach_kwargs
        self.session: TolariaSession | None = None
        self._resume: dict | None = None  # session state from a Lightning checkpoint
        self._fitting = False  # inside the fit this callback's session belongs to
        self._stepped_at = -1  # trainer.global_step at the last session.step
        self._epoch_over = False  # the epoch's last training batch has run
        self._epoch_ended = False  # session.end_epoch was called for this epoch
        self._val: dict[str, float] = {}

    # ---- start / end --------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        if self.session is not None:
            raise RuntimeError("an EsperCallback drives one fit: its session is already "
                               "attached; use a new EsperCallback for another fit")
        if trainer.world_size > 1:
            raise RuntimeError(
                f"EsperCallback runs in a single process (world size {trainer.world_size}): "
                "seeds are not part of the distributed module, so their gradients would not "
                "be synchronised across processes")
        model = self._target(pl_module)
        optimizers = trainer.optimizers
        if self.optimizer_index >= len(optimizers):
            raise ValueError(f"optimizer={self.optimizer_index}, but configure_optimizers gave "
                             f"{len(optimizers)} optimizer(s)")
        kwargs = dict(self.attach_kwargs)
        example = pl_module.example_input_array
        if "example_input" not in kwargs and self.module is None \
                and isinstance(example, (torch.Tensor, tuple, list)):
            kwargs["example_input"] = _to_device(example, pl_module.device)
        if self._resume is not None:
            if kwargs.get("resume") is not None:
                raise ValueError("resume= and a Lightning ckpt_path both restore the session; "
                                 "give one")
            kwargs["resume"] = self._resume
        self.session = attach(model, optimizers[self.optimizer_index], self.policy, **kwargs)
        self._fitting = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._stepped_at = trainer.global_step  # after Lightning restored a checkpoint's loops

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close(finished=True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close(finished=False)

    def _close(self, finished: bool) -> None:
        """A finished fit expires pending decisions and settles live seeds (the model is
        final); an interrupted one keeps both, as for a run to be resumed (a checkpoint
        taken on the exception, e.g. by OnExceptionCheckpoint, then still has them)."""
        self._fitting = False
        if self.session is not None:
            self.session.close(expire_pending=finished)

    def _target(self, pl_module) -> nn.Module:
        if self.module is None:
            return pl_module
        target = getattr(pl_module, self.module, None)
        if not isinstance(target, nn.Module):
            raise ValueError(f"module={self.module!r}: the LightningModule has no submodule "
                             "of that name")
        return target

    # ---- steps -----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_over = self._epoch_ended = False
        self._val = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._fitting or trainer.global_step == self._stepped_at:
            return  # no optimizer step in this batch (gradient accumulation, skipped step)
        self._stepped_at = trainer.global_step
        loss, out, targets = self._unpack(trainer, pl_module, outputs)
        last = batch_idx + 1 >= trainer.num_training_batches or (
            trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps)
        self._epoch_over = last
        self.session.step(loss, out, targets, last_in_epoch=last)

    def _unpack(self, trainer, pl_module, outputs):
        loss = out = targets = None
        if isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, dict):
            loss = outputs.get("loss")
            out, targets = outputs.get(self.outputs_key), outputs.get(self.targets_key)
        if loss is None:
            raise ValueError("EsperCallback needs the training loss: return it from "
                             "training_step (a tensor, or a dict with 'loss')")
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divided it
        return loss, out, targets

    # ---- epochs ----------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if not self._fitting or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self._val = {name: float(metrics[key]) for name, key in
                     (("val_loss", self.val_loss_key), ("val_accuracy", self.val_accuracy_key))
                     if key in metrics}
        if self._epoch_over:
            self._end_epoch()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._fitting:
            self._end_epoch()

    def _end_epoch(self) -> None:
        if self._epoch_ended:
            return
        self._epoch_ended = True
        self.session.end_epoch(dict(self._val))  # an absent metric is NaN to the session

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.session is None:
            return {}
        return {"session": session_state(self.session)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict.get("session")


def _to_device(example: Any, device: torch.device) -> Any:
    """example_input_array (a tensor or a tuple of positional arguments) on `device`."""
    if isinstance(example, torch.Tensor):
        return example.to(device)
    if isinstance(example, list):
        example = tuple(example)
    if isinstance(example, tuple):
        return tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in example)
    return example
