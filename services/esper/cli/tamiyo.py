"""`esper tamiyo`: Tamiyo's offline tools (Simic).

    esper tamiyo collect --episodes N --out DIR [--seed S] [--epochs E] [--lr-schedule cosine]
                         [--growth-rule slowdown] [--epsilon LOW HIGH]
    esper tamiyo train --data DIR --out PATH [--epochs N] [--bc-weight W] [--awr-weight W] [--seed S]
    esper tamiyo train --oona-dump FILE [FILE...] --out PATH     (recorded Oona topics, kcat framing)
    esper tamiyo train --nissa [HOST:PORT] --out PATH [--run RUN...] (runs Nissa recorded)
    esper tamiyo evaluate --policy PATH [--episodes N] [--lr-schedule cosine]
                          [--growth-rule slowdown] [--json OUT]

`collect` runs short real training episodes of the built-in digits task and records every
snapshot, decision, ack and field report; `train` learns the GNN policy from them (behaviour
cloning from the heuristic + IQL) and writes a versioned safetensors artifact that
`GnnPolicy.load` and Tamiyo's server load; `evaluate` compares it with the heuristic on
held-out episodes. Runs read from Oona or Nissa must be runs of the built-in task (telemetry
carries no model graph; the task's graph and kernels are used). Nissa is read through its
API (ListEvents): `--nissa HOST:PORT`, or `--nissa` alone for $ESPER_NISSA_ADDRESS, else the
local stack's Nissa (`esper up`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path

from esper.cli import addresses
from esper.cli.errors import UsageError

NISSA_ADDRESS_ENV = "ESPER_NISSA_ADDRESS"
# Upper bounds that keep a typo from starting a day-long job.
MAX_EPISODES = 10_000
MAX_EPOCHS = 10_000
MAX_EPOCH_REPEATS = 100


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tamiyo", help="Tamiyo's offline tools: collect episodes, train and evaluate the learned policy",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="tamiyo_action", metavar="ACTION")
    actions.required = True
    _register_collect(actions)
    _register_train(actions)
    _register_evaluate(actions)


# esper.tamiyo.simic.episodes.LR_SCHEDULES and GROWTH_RULES (not imported: `esper --help`
# loads no torch).
LR_SCHEDULES = ("constant", "cosine")
GROWTH_RULES = ("plateau", "slowdown", "first-epoch")


def _episode_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                   help="each episode's learning rate: constant, or decayed to zero on a cosine "
                        "over the episode (default constant)")
    p.add_argument("--growth-rule", choices=GROWTH_RULES, default="plateau",
                   help="what the episodes' heuristic grows on: validation plateaus, also "
                        "diminishing returns, or also the first epoch's pace, as Tolaria's "
                        "local heuristic (default plateau)")
    p.add_argument("--epoch-repeats", type=int, default=1, metavar="K",
                   help="passes over the training data per epoch (default 1; digits' first "
                        "epoch holds its fast learning from about 8)")


def _register_collect(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("collect", help="record short real training episodes of the digits task")
    p.add_argument("--episodes", type=int, required=True, metavar="N")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the episode files")
    p.add_argument("--seed", type=int, default=0, help="collection seed (episode seeds and policies)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per episode (default 30)")
    _episode_flags(p)
    p.add_argument("--epsilon", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="range of the per-episode exploration rate (default 0.05 0.3)")
    p.set_defaults(func=run_collect)


def _register_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train the GNN policy offline (BC + IQL)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR", help="directory of episode files (esper tamiyo collect)")
    source.add_argument("--oona-dump", nargs="+", metavar="FILE", help="dumps of Oona topics")
    source.add_argument("--nissa", nargs="?", const="", metavar="HOST:PORT",
                        help=f"runs Nissa recorded, through its API (alone: ${NISSA_ADDRESS_ENV} "
                             "or the local stack)")
    # Simic no longer reads Nissa's tables; the old option answers with what to pass instead.
    source.add_argument("--nissa-dsn", metavar="DSN", help=argparse.SUPPRESS)
    p.add_argument("--framing", choices=("kcat", "base64"), default="kcat", help="framing of --oona-dump")
    p.add_argument("--run", action="append", default=None, metavar="RUN_ID", help="with --nissa: only these runs")
    p.add_argument("--out", required=True, metavar="PATH", help="policy artifact to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--bc-weight", type=float, default=None, help="behaviour cloning weight (default 1)")
    p.add_argument("--awr-weight", type=float, default=None, help="IQL advantage-weighted term weight (default 1)")
    p.add_argument("--action-balance", type=float, default=None, metavar="B",
                   help="weigh germinate and wait by their share of those decisions ** -B in "
                        "the losses (0: every decision alike, the default; 1: both choices alike)")
    p.add_argument("--candidate-bc-weight", type=float, default=None, metavar="W",
                   help="weight of cloning the heuristic's germinations (slot and blueprint) by "
                        "the candidate features alone (0: off, the default)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--version", default=None, help="policy version to stamp (default gnn@simic-<digest>)")
    p.add_argument("--strict", action="store_true", help="refuse a dataset with any bad record")
    p.add_argument("--growth-rule", choices=GROWTH_RULES, default="plateau",
                   help="what the episodes' heuristic grew on (as collected): the policy's "
                        "growth-signal feature reads the same rule (default plateau)")
    p.set_defaults(func=run_train)


def _register_evaluate(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("evaluate", help="learned policy vs heuristic on held-out episodes")
    p.add_argument("--policy", required=True, metavar="PATH", help="policy artifact")
    p.add_argument("--episodes", type=int, default=5, metavar="N")
    _episode_flags(p)
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results here")
    p.set_defaults(func=run_evaluate)


def _positive(name: str, value: int | None, limit: int) -> None:
    if value is not None and not 0 < value <= limit:
        raise UsageError(f"{name} must be in 1..{limit}, got {value}")


def _weight(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{name} must be a finite number >= 0, got {value}")


def _writable_file(path: str, flag: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file path")
    if not p.parent.exists():
        raise UsageError(f"{flag}: directory {p.parent} does not exist")
    return p


def _episode_repeats(args: argparse.Namespace) -> int:
    _positive("--epoch-repeats", args.epoch_repeats, MAX_EPOCH_REPEATS)
    return args.epoch_repeats


def run_collect(args: argparse.Namespace) -> int:
    from esper.tamiyo.simic.episodes import DEFAULT_EPSILON, EpisodeConfig, collect

    _positive("--episodes", args.episodes, MAX_EPISODES)
    _positive("--epochs", args.epochs, MAX_EPOCHS)
    eps = tuple(args.epsilon) if args.epsilon else DEFAULT_EPSILON
    if not 0.0 <= eps[0] <= eps[1] <= 1.0:
        raise UsageError(f"--epsilon needs 0 <= LOW <= HIGH <= 1, got {eps[0]} {eps[1]}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    config = EpisodeConfig(lr_schedule=args.lr_schedule, growth_rule=args.growth_rule,
                           epoch_repeats=_episode_repeats(args),
                           **({"epochs": args.epochs} if args.epochs else {}))

    def progress(i: int, result) -> None:
        s = result.summary
        print(f"episode {i + 1}/{args.episodes} {s['run_id']}: val_accuracy {s['val_accuracy']:.3f}, "
              f"{len(result.episode.of_kind('decision'))} decisions, fossilized {s['seeds_fossilized']}, "
              f"culled {s['seeds_culled']}", flush=True)

    collect(str(out), args.episodes, seed=args.seed, config=config, epsilon=eps, progress=progress)
    print(f"wrote {args.episodes} episodes to {out}")
    return 0


def _load(args: argparse.Namespace):
    from esper.tamiyo.simic.dataset import DatasetError, load_dataset

    try:
        if args.data:
            return load_dataset(args.data, strict=args.strict)
        from esper.tamiyo.simic.episodes import task_context
        from esper.tamiyo.simic.sources import read_nissa, read_oona_dump

        context, candidates = task_context()
        if args.oona_dump:
            return read_oona_dump(args.oona_dump, context, candidates, framing=args.framing)
        return asyncio.run(read_nissa(_nissa_address(args), context, candidates, run_ids=args.run))
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the training data: {exc}") from None


def _nissa_address(args: argparse.Namespace) -> str:
    address = addresses.resolve_address(args.nissa or None, NISSA_ADDRESS_ENV, "nissa")
    if not address:
        raise UsageError(f"--nissa: no Nissa address: pass --nissa HOST:PORT, set ${NISSA_ADDRESS_ENV} "
                         "or run `esper up`")
    return addresses.checked_address("--nissa", address)


def _check_sources(args: argparse.Namespace) -> None:
    if args.nissa_dsn is not None:
        raise UsageError("--nissa-dsn: Simic reads Nissa's history through Nissa's API now; "
                         "pass --nissa HOST:PORT (Nissa's gRPC address) instead")
    if args.run and args.nissa is None:
        raise UsageError("--run: only with --nissa")


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from esper.tamiyo.simic.episodes import episode_heuristic
    from esper.tamiyo.simic.train import SimicConfig, train_policy

    _check_sources(args)
    _positive("--epochs", args.epochs, MAX_EPOCHS)
    _weight("--bc-weight", args.bc_weight)
    _weight("--awr-weight", args.awr_weight)
    _weight("--action-balance", args.action_balance)
    _weight("--candidate-bc-weight", args.candidate_bc_weight)
    out = _writable_file(args.out, "--out")
    overrides = {k: v for k, v in (("epochs", args.epochs), ("bc_weight", args.bc_weight),
                                   ("awr_weight", args.awr_weight), ("action_balance", args.action_balance),
                                   ("candidate_bc_weight", args.candidate_bc_weight), ("seed", args.seed))
                 if v is not None}
    config = dataclasses.replace(SimicConfig(), heuristic=episode_heuristic(args.growth_rule), **overrides)
    dataset = _load(args)
    for message in dataset.problems.messages:
        print(f"warning: {message}", file=sys.stderr)
    print(f"dataset: {dataset.summary()}")
    try:
        result = train_policy(dataset, config)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    t = result.tensors
    print(f"transitions used: {result.samples} {dict(sorted(t.counts.items()))}; dropped: {t.dropped_illegal} "
          f"illegal under the rebuilt mask, {t.dropped_unexpressible} unexpressible")
    for s in result.history[:: max(1, len(result.history) // 10)] + result.history[-1:]:
        print(f"epoch {s.epoch}: bc {s.bc_loss:.4f} awr {s.awr_loss:.4f} value {s.value_loss:.4f} "
              f"critic {s.critic_loss:.4f}")
    sha = result.save(out, args.version)
    print(f"wrote {out} ({result.version}, sha256 {sha})")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from esper.tamiyo.policies.artifact import PolicyArtifactError, load_policy
    from esper.tamiyo.simic.episodes import EpisodeConfig
    from esper.tamiyo.simic.evaluate import evaluate

    _positive("--episodes", args.episodes, MAX_EPISODES)
    repeats = _episode_repeats(args)
    try:
        load_policy(args.policy)
    except PolicyArtifactError as exc:
        raise UsageError(f"--policy: {exc}") from None
    out = _writable_file(args.json, "--json") if args.json else None
    config = EpisodeConfig(lr_schedule=args.lr_schedule, growth_rule=args.growth_rule,
                           epoch_repeats=repeats)
    result = evaluate(args.policy, args.episodes, config=config)
    table = {name: arm["aggregate"] for name, arm in result["arms"].items()}
    print(json.dumps({"policy_version": result["policy_version"], "arms": table}, indent=2))
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    return 0
