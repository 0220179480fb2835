"""Tolaria: the training-loop side of Esper.

Two ways in:
- `Trainer(model, optimizer_factory, train_loader, val_loader, ...).fit()` owns the loop;
- `session = attach(model, optimizer)` for users who keep their own loop: call
  `session.step(loss, outputs, targets)` after `optimizer.step()` and
  `session.end_epoch(val_metrics)` after validation.

Either way, snapshots go to a policy (in-process heuristic by default, or a remote Tamiyo
session), decisions are applied between steps and acked exactly once, seeds get their own
optimizer param groups, and `save_checkpoint` / `resume=` make runs resumable. Under
torch.distributed (DDP) the same code runs on every rank (esper.tolaria.distributed).
"""

from esper.leyline.v1.tamiyo_pb2 import ResourceBudget  # attach(budget=...): what growth may afford
from esper.tolaria.api import attach
from esper.tolaria.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from esper.tolaria.config import TolariaConfig
from esper.tolaria.distributed import ReplicaDivergence, ddp_model
from esper.tolaria.policy import (
    LOCAL_HEURISTIC,
    HeuristicConfig,
    LocalPolicy,
    PolicySource,
    RemotePolicy,
    ReplayPolicy,
)
from esper.tolaria.session import TolariaSession
from esper.tolaria.summary import RunSummary, SeedSummary
from esper.tolaria.trainer import Trainer

__all__ = [
    "LOCAL_HEURISTIC",
    "CheckpointError",
    "HeuristicConfig",
    "LocalPolicy",
    "PolicySource",
    "RemotePolicy",
    "ReplayPolicy",
    "ReplicaDivergence",
    "ResourceBudget",
    "RunSummary",
    "SeedSummary",
    "TolariaConfig",
    "TolariaSession",
    "Trainer",
    "attach",
    "ddp_model",
    "load_checkpoint",
    "save_checkpoint",
]
