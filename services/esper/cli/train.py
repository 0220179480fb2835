"""`esper train`: train a model that grows seeds while it trains.

By default a built-in task (a small CNN on scikit-learn's digits, or Fashion-MNIST) with
the in-process heuristic policy; `--tamiyo` uses a remote Tamiyo session instead (with the
local policy while Tamiyo is unreachable), `--urza` fetches kernels from Urza, `--kafka`
publishes telemetry through Oona. `--entry module:function` trains your own model: the
function takes no arguments and returns (model, train_loader, val_loader, loss_fn).
"""

from __future__ import annotations

import argparse
import importlib
import math
import re

from esper.cli.errors import UsageError
from esper.leyline.ids import run_id_problem

# torch is imported by the functions that train, not here: every `esper` command imports
# this module to build its parser, and torch costs a second or more of each one's start.

# host:port (a name, an IPv4 address or a bracketed IPv6 address).
ADDRESS_RE = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
# Long enough for the default narrow digits host to plateau (around epoch 12-15) and for a
# seed germinated then to train, blend and fossilize: ~10 s on a CPU core.
DEFAULT_EPOCHS = 30
DEFAULT_BATCH_SIZE = 64
# Adam's step size for the small example CNNs: converges on digits in a few epochs.
DEFAULT_LR = 1e-2
# The transformer of --task shakespeare: the experiment's char host learns best near 3e-3.
SHAKESPEARE_LR = 3e-3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model that grows seeds (built-in task or yours)",
                              description=__doc__)
    p.add_argument("--task", choices=("digits", "fashion-mnist", "shakespeare"), default=None,
                   help="built-in task (default: digits; shakespeare: a small transformer on "
                        "characters, whose residual stream Esper widens)")
    p.add_argument("--entry", default=None, metavar="MODULE:FUNCTION",
                   help="your own model and data: FUNCTION() -> (model, train_loader, "
                        "val_loader, loss_fn)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate of the host (default {DEFAULT_LR:g}; "
                        f"{SHAKESPEARE_LR:g} for --task shakespeare)")
    p.add_argument("--seed", type=int, default=0, help="random seed (weights, data order)")
    p.add_argument("--tamiyo", default=None, metavar="ADDRESS", help="remote policy host:port")
    p.add_argument("--static", action="store_true",
                   help="no growth: train the host alone (with --seed, the baseline of a grown run)")
    p.add_argument("--on-outage", choices=("local", "none"), default="local",
                   help="while Tamiyo is unreachable: local policy or no decisions")
    p.add_argument("--urza", default=None, metavar="ADDRESS", help="Urza host:port for kernels")
    p.add_argument("--kafka", default=None, metavar="BOOTSTRAP", help="Kafka bootstrap for telemetry")
    p.add_argument("--run-id", default=None)
    p.add_argument("--snapshot-every", type=int, default=None, metavar="STEPS")
    p.add_argument("--slot-depth", type=int, default=1, metavar="N",
                   help="seeds that may stack at each slot's layer (slot k opens once "
                        "slot k-1 has fossilized; default 1)")
    p.add_argument("--max-training-gflops", type=float, default=None, metavar="GFLOPS",
                   help="a training-compute budget: no germination whose projected training "
                        "FLOPs (host and seeds, over the planned epochs) would exceed it")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="save after every epoch")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue a checkpointed run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.snapshot_every is not None and args.snapshot_every <= 0:
        raise UsageError(f"--snapshot-every must be > 0, got {args.snapshot_every}")
    from esper.kasmina.config import MAX_SLOT_DEPTH  # here: `esper` starts without torch

    if not 1 <= args.slot_depth <= MAX_SLOT_DEPTH:
        raise UsageError(f"--slot-depth must be in 1..{MAX_SLOT_DEPTH}, got {args.slot_depth}")
    budget = args.max_training_gflops
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--max-training-gflops must be a positive number, got {budget}")
    if budget is not None and args.static:
        raise UsageError("--static grows nothing: drop --max-training-gflops")
    if args.urza is not None and not _valid_address(args.urza):
        raise UsageError(f"--urza must be HOST:PORT, got {args.urza!r}")
    if args.tamiyo is not None:
        from esper.rpc.channels import ChannelConfigError, parse_target  # grpc loads on demand

        try:  # Tamiyo may run as replicas: an address list or a DNS name (esper.rpc.channels)
            parse_target(args.tamiyo)
        except ChannelConfigError as exc:
            raise UsageError(f"--tamiyo must be HOST:PORT, an address list or dns:///NAME:PORT ({exc})") from None
    if args.kafka is not None and not all(_valid_address(a) for a in args.kafka.split(",")):
        raise UsageError(f"--kafka must be HOST:PORT[,HOST:PORT...], got {args.kafka!r}")
    if args.static and args.tamiyo:
        raise UsageError("--static trains without a policy: drop --tamiyo")
    if args.entry is not None and args.task is not None:
        raise UsageError("give --task or --entry, not both")
    if args.run_id is not None and (problem := run_id_problem(args.run_id)):
        raise UsageError(f"--run-id: {problem}")


def _budget(gflops: float | None):
    """The run's ResourceBudget: --max-training-gflops (the Trainer plans its steps)."""
    if gflops is None:
        return None
    from esper.tolaria import ResourceBudget

    return ResourceBudget(max_training_flops=gflops * 1e9)


def _valid_address(value: str) -> bool:
    m = ADDRESS_RE.match(value)
    return bool(m) and 0 < int(m.group(2)) < 65536


def _entry(spec: str):
    from torch import nn
    from torch.nn import functional as F

    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise UsageError(f"--entry must be MODULE:FUNCTION, got {spec!r}")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except ImportError as exc:
        raise UsageError(f"--entry: cannot import {module_name!r}: {exc}") from exc
    except AttributeError:
        raise UsageError(f"--entry: module {module_name!r} has no {func_name!r}") from None
    result = func()
    if not (isinstance(result, tuple) and len(result) == 4):
        raise UsageError(f"--entry: {spec}() must return (model, train_loader, val_loader, "
                         f"loss_fn), got {type(result).__name__}")
    model, train_loader, val_loader, loss_fn = result
    if not isinstance(model, nn.Module):
        raise UsageError(f"--entry: the model must be a torch.nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError("--entry: loss_fn must be callable or None")
    inputs, _ = next(iter(train_loader))
    return model, train_loader, val_loader, loss_fn or F.cross_entropy, inputs[:2]


def _workload(args: argparse.Namespace):
    import torch

    from esper.tolaria.tasks import DatasetMissing, load_task

    torch.manual_seed(args.seed)
    if args.entry:
        return _entry(args.entry)
    try:
        task = load_task(args.task or "digits", batch_size=args.batch_size, seed=args.seed)
    except DatasetMissing as exc:
        raise UsageError(str(exc)) from exc
    return task.model, task.train_loader, task.val_loader, task.loss_fn, task.example_input


def run(args: argparse.Namespace) -> int:
    import torch

    from esper.kasmina import KasminaConfig
    from esper.tolaria import CheckpointError, TolariaConfig, Trainer

    _check(args)
    model, train_loader, val_loader, loss_fn, example = _workload(args)
    config = TolariaConfig(progress=not args.no_progress, kafka_bootstrap=args.kafka,
                           on_outage=args.on_outage)
    if args.run_id:
        config.run_id = args.run_id
    if args.snapshot_every:
        config.snapshot_every = args.snapshot_every
    policy = "none" if args.static else "local"
    if args.tamiyo:
        from esper.tolaria.policy.remote import RemotePolicy

        policy = RemotePolicy(args.tamiyo)
    lr = args.lr or (SHAKESPEARE_LR if args.task == "shakespeare" else DEFAULT_LR)
    try:
        trainer = Trainer(model, lambda params: torch.optim.Adam(params, lr=lr), train_loader,
                          val_loader, loss_fn=loss_fn, epochs=args.epochs, policy=policy,
                          config=config, checkpoint_path=args.checkpoint, resume=args.resume,
                          example_input=example, urza=args.urza,
                          kasmina=KasminaConfig(slot_depth=args.slot_depth),
                          budget=_budget(args.max_training_gflops))
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
    print(trainer.fit())  # the run's report: parameters, FLOPs, decisions, each seed's life
    return 0
