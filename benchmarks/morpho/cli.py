"""Command line of benchmarks/morphogenesis.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch

from esper.cli.numbers import non_negative_int, positive_int
from esper.kasmina.config import SEED_INITS, KasminaConfig
from esper.runtime.config import ConfigError
from esper.tamiyo.heuristic_file import heuristic_overrides
from esper.tolaria import LOCAL_HEURISTIC
from esper.tolaria.config import SEED_LR_RULES

from . import data as data_mod
from . import report, text
from .arms import (
    ARMS,
    HEURISTIC_OPTIONS,
    SCHEDULE_SPACINGS,
    SEED_PARAM_FRACTION,
    Context,
    NotAvailable,
    follows_defaults,
    runs_for,
    schedule_arm,
    spacing_of,
)
from .flops import count_every_pass
from .hosts import HOSTS, STREAM_HOSTS
from .loop import LEARNING_RATE, LR_SCHEDULES

RESULTS = Path(__file__).resolve().parent.parent / "results"
SCRIPT = Path(__file__).resolve().parent.parent / "morphogenesis.py"
# Run seeds far from Simic's collection seeds (0..) and from bench_growth's.
SEED_BASE = 3_000_000
BATCH_SIZE = 128
TEXT_BATCH_SIZE = 32  # sequences of 64 characters


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: choose from {', '.join(choices)}")
        return items
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="morphogenesis.py", description=(
        "Does growth pay? Esper against its alternatives on Fashion-MNIST at matched "
        "training FLOPs. Writes morphogenesis.json, .md and .png to --out-dir."))
    p.add_argument("--seeds", type=positive_int, default=5)
    p.add_argument("--first-seed", type=non_negative_int, default=0, metavar="I",
                   help="run seeds I .. I+seeds-1 (so seeds can run in parallel processes and "
                        "be put together with --merge)")
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--hosts", type=_csv(HOSTS), default=list(HOSTS))
    p.add_argument("--arms", type=_csv(ARMS), default=None,
                   help="arms to run (those depending on Esper need esper too; default all); "
                        "with --merge, the arms taken from each merged result")
    p.add_argument("--quick", action="store_true",
                   help="one seed, two epochs, a data subset: proves the harness runs, never the result")
    p.add_argument("--learning-rate", type=_rate, default=LEARNING_RATE,
                   help=f"Adam's peak learning rate in every arm (default {LEARNING_RATE:g}); "
                        "results at another rate never merge with the default's")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                   help="every arm's learning rate: a cosine decay to zero over the run (the "
                        "FLOP-matched controls are then second runs whose schedule ends at "
                        "Esper's FLOPs), or constant (they are read where their run crossed "
                        "Esper's FLOPs)")
    p.add_argument("--flops-weight", type=_weight, default=None, metavar="W",
                   help="the esper and esper-stack arms' HeuristicConfig.flops_weight (default: the local "
                        "heuristic's, 0.5; 0: compute unpriced); the arms that follow Esper's run "
                        "follow whatever it grew")
    p.add_argument("--training-flops-budget", type=_gflops, default=None, metavar="GFLOPS",
                   help="the esper and esper-stack arms' ResourceBudget.max_training_flops, in "
                        "GFLOPs of training steps as Tolaria counts them (validation and safe "
                        "points come on top), projected over the run's planned steps "
                        "(default: none)")
    p.add_argument("--budget-flops-weight", type=_weight, default=None, metavar="W",
                   help="the esper and esper-stack arms' HeuristicConfig.budget_flops_weight: "
                        "the price of compute under --training-flops-budget when "
                        "--flops-weight leaves it unpriced (default: the heuristic's, 0: none)")
    p.add_argument("--heuristic", type=_heuristic_setting, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="the esper and esper-stack arms' HeuristicConfig with KEY set to VALUE "
                        "(a number, or true/false), on top of the local heuristic's defaults; "
                        "repeatable (e.g. seed_pace_from_start=true)")
    p.add_argument("--slot-depth", type=_depth, default=1, metavar="N",
                   help="seeds that stack: KasminaConfig.slot_depth of every grown arm (Esper, "
                        "random growth, the fixed schedule; default 1, one seed per slot)")
    p.add_argument("--seed-param-fraction", type=_seed_param_fraction, default=SEED_PARAM_FRACTION,
                   metavar="F",
                   help="KasminaConfig.max_seed_param_fraction of every grown arm: growth may "
                        f"add up to F times the host's parameters (default {SEED_PARAM_FRACTION:g})")
    p.add_argument("--seed-init", choices=SEED_INITS, default="default",
                   help="KasminaConfig.seed_init of every grown arm: 'bottleneck' starts a "
                        "seed's entry units along the slot's bottleneck statistic (default: "
                        "as the blueprint initialises them)")
    p.add_argument("--seed-lr", choices=SEED_LR_RULES, default="follow",
                   help="TolariaConfig.seed_lr of every grown arm: 'rewarm' starts a seed "
                        "germinated after the schedule decayed at the initial rate, then "
                        "follows the schedule scaled (default: the host's current rate)")
    p.add_argument("--width-growth", action="store_true",
                   help="every grown arm (Esper, random growth, ...) may also grow the opt-in "
                        "width blueprint BP-WIDEN-HALF, so the arms that follow Esper's run "
                        "(its final size and architecture, the schedule) follow its widenings")
    p.add_argument("--schedule-every", type=_spacings, default=None, metavar="EPOCHS",
                   help="the fixed schedule's spacings, epochs between its growth events, "
                        f"comma-separated (default: {','.join(map(str, SCHEDULE_SPACINGS))}; "
                        "--quick: 1): each runs as an arm schedule-every-N, and the one with "
                        "the best mean validation accuracy is the schedule Esper is compared with")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--name", default="morphogenesis", help="output file stem")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="run the seeds in N processes at once (every arm uses one torch "
                        "thread: one process per core), then merge them into --name")
    # A child process of --jobs: it writes its part and leaves the table to its parent.
    p.add_argument("--part", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--report-only", action="store_true",
                   help="re-render the .md and .png from the existing JSON")
    p.add_argument("--esper-from", type=Path, default=None, metavar="JSON",
                   help="take each seed's esper run from an earlier result (same epochs, "
                        "data and seeds) instead of running it again: the arms that depend on "
                        "Esper's run (its final size, architecture, FLOPs) then cost only "
                        "their own training (esper in --arms: its runs are taken into this "
                        "result, not run again)")
    p.add_argument("--merge", type=Path, action="append", default=[], metavar="JSON",
                   help="add the arms (or hosts) of another result (same epochs and data; e.g. "
                        "an arm run later with --arms X --name other) to --name's JSON, then "
                        "re-render")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.width_growth and args.slot_depth > 1:  # a stacked slot offers no widening
        p.error("--width-growth and --slot-depth > 1 do not combine yet (no stacked slot widens)")
    args.heuristic = dict(args.heuristic)
    for key in HEURISTIC_OPTIONS:
        if key in args.heuristic and getattr(args, key) is not None:
            p.error(f"--heuristic {key}=... and --{key.replace('_', '-')}: give it once")
    count_every_pass()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{args.name}.{ext}" for ext in ("json", "md", "png")}
    if args.report_only or args.merge:
        try:
            result = spaced_schedule(read_result(paths["json"]))
            others = [(other, spaced_schedule(read_result(other))) for other in args.merge]
        except ResultUnreadable as exc:
            print(f"{'--merge' if args.merge else '--report-only'}: {exc}", file=sys.stderr)
            return 2
        for h in result["hosts"].values():  # summaries from the runs, by this version's rules
            h["summary"] = report.summarise(h["runs"])
        for other, theirs in others:
            problem = merge(result, only_arms(theirs, args.arms) if args.arms else theirs)
            if problem:
                print(f"--merge {other}: {problem}", file=sys.stderr)
                return 2
        if args.merge:
            _write(result, paths)
        _render(result, paths)
        return 0
    args.arms = args.arms or list(ARMS)
    if args.quick:
        args.seeds, args.epochs = 1, 2
    args.schedule_every = args.schedule_every or ((1,) if args.quick else SCHEDULE_SPACINGS)
    if args.jobs > 1 and args.seeds > 1:
        return _run_in_jobs(args, list(argv if argv is not None else sys.argv[1:]), paths)
    torch.set_num_threads(1)  # small models on a shared 2-core machine: threads only contend
    try:
        data = {family: _load(family, args.quick) for family in {_family(h) for h in args.hosts}}
    except text.CorpusUnavailable as exc:
        print(f"--hosts char: {exc}", file=sys.stderr)
        return 2
    result = {"config": {"command": _command(argv if argv is not None else sys.argv[1:]), "seeds": args.seeds, "epochs": args.epochs,
                         "hosts": args.hosts, "arms": args.arms, "quick": args.quick,
                         "seed_base": SEED_BASE, "lr_schedule": args.lr_schedule,
                         "learning_rate": args.learning_rate,
                         "flops_weight": args.flops_weight, "slot_depth": args.slot_depth,
                         "seed_param_fraction": args.seed_param_fraction,
                         "seed_init": args.seed_init, "seed_lr": args.seed_lr,
                         "width_growth": args.width_growth, "heuristic": args.heuristic,
                         "heuristic_defaults": dataclasses.asdict(LOCAL_HEURISTIC),
                         "stream_room": STREAM_ROOM,
                         "training_flops_budget": args.training_flops_budget,
                         "budget_flops_weight": args.budget_flops_weight,
                         "schedule_every": list(args.schedule_every),
                         "data": {f: d.describe() for f, d in sorted(data.items())},
                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                         "machine": this_machine()},
              "hosts": {}}
    earlier = _earlier_esper(args.esper_from, result) if args.esper_from else {}
    if isinstance(earlier, str):
        print(f"--esper-from {args.esper_from}: {earlier}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for host in args.hosts:
        h = result["hosts"][host] = {"runs": {}, "unavailable": {}, "summary": {}}
        for i in range(args.first_seed, args.first_seed + args.seeds):
            ctx = Context(host=host, seed=SEED_BASE + i, epochs=args.epochs, data=data[_family(host)],
                          quick=args.quick, work_dir=out, lr_schedule=args.lr_schedule,
                          learning_rate=args.learning_rate,
                          flops_weight=args.flops_weight, slot_depth=args.slot_depth,
                          seed_param_fraction=args.seed_param_fraction,
                          seed_init=args.seed_init, seed_lr=args.seed_lr,
                          width_growth=args.width_growth, heuristic=args.heuristic,
                          training_flops_budget=args.training_flops_budget,
                          budget_flops_weight=args.budget_flops_weight,
                          schedule_every=args.schedule_every)
            if (host, ctx.seed) in earlier:
                ctx.done["esper"] = earlier[host, ctx.seed]
            for arm, runner in [pair for a in ARMS if a in args.arms for pair in runs_for(a, ctx)]:
                if arm in h["unavailable"]:
                    continue
                try:  # an arm already done is Esper's run from --esper-from: taken, not rerun
                    record = ctx.done[arm] if arm in ctx.done else runner(ctx)
                except NotAvailable as exc:
                    h["unavailable"][arm] = str(exc)
                    continue
                record["seed"] = ctx.seed
                ctx.done[arm] = record
                h["runs"].setdefault(arm, []).append(record)
                print(f"[{time.perf_counter() - t0:7.0f}s] {host} seed {i} {arm:18s} "
                      f"test {100 * record['test_accuracy']:.2f}% "
                      f"{record['flops']['total'] / 1e9:7.2f} GFLOP params {record['params']:6d} "
                      f"{record['wall_s']:.0f}s", flush=True)
            h["summary"] = report.summarise(h["runs"])
            result["config"]["seeds_done"] = i + 1 - args.first_seed
            result["config"]["wall_s"] = time.perf_counter() - t0
            _write(result, paths)  # after every seed: a long run is never all-or-nothing
    _render(result, paths)
    if not args.part:
        print(paths["md"].read_text())
    return 0


def _run_in_jobs(args: argparse.Namespace, argv: list[str], paths: dict) -> int:
    """The seeds split into args.jobs runs of this script at once, each writing its part
    next to --name; the parts merged into --name (the command recorded is this one)."""
    t0 = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = min(args.jobs, len(seeds))
    chunks = [seeds[j * len(seeds) // jobs:(j + 1) * len(seeds) // jobs] for j in range(jobs)]
    common = _without(argv, ("--jobs", "--seeds", "--first-seed", "--name"))
    children = []
    for j, chunk in enumerate(chunks):
        part = f"{args.name}.part{j}"
        children.append((part, subprocess.Popen(
            [sys.executable, str(SCRIPT), *common, "--part", "--first-seed", str(chunk[0]),
             "--seeds", str(len(chunk)), "--name", part])))
    failed = [(part, child.wait()) for part, child in children]
    failed = [(part, rc) for part, rc in failed if rc != 0]
    if failed:
        print(f"--jobs: {', '.join(f'{part} exited {rc}' for part, rc in failed)}; "
              f"the parts written are in {args.out_dir}", file=sys.stderr)
        return 1
    parts = [args.out_dir / f"{part}.json" for part, _ in children]
    result = read_result(parts[0])
    for other in parts[1:]:
        problem = merge(result, read_result(other))
        if problem:  # the same command's parts: never expected
            print(f"--jobs: {other}: {problem}", file=sys.stderr)
            return 1
    result["config"].pop("merged", None)
    result["config"].update(command=_command(argv), first_seed=args.first_seed, jobs=jobs,
                            wall_s=time.perf_counter() - t0)
    _write(result, paths)
    _render(result, paths)
    for path in parts:
        for ext in (".json", ".md", ".png"):
            path.with_suffix(ext).unlink(missing_ok=True)
    print(paths["md"].read_text())
    return 0


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv without `options` and their values (`--opt value` or `--opt=value`)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in options:
            skip = True
        elif not token.startswith(tuple(f"{o}=" for o in options)):
            out.append(token)
    return out


def _command(argv: list[str]) -> str:
    return ("python benchmarks/morphogenesis.py " + shlex.join(argv)).strip()


def _earlier_esper(path: Path, result: dict) -> dict | str:
    """(host, seed) -> the esper record of an earlier result, or why it cannot be used."""
    try:
        other = read_result(path)
    except ResultUnreadable as exc:
        return str(exc)
    problem = config_mismatch(result["config"], other["config"])
    if problem:
        return problem
    result["config"]["esper_from"] = other["config"]["command"]
    _add_machines(result["config"], other["config"])
    return {(host, r["seed"]): r for host, h in other["hosts"].items()
            for r in h["runs"].get("esper", [])}


def this_machine() -> str:
    """The CPU the runs ran on and the vector instructions torch uses on it: the same
    seed's run repeats to the bit on one machine, not across machines (another CPU rounds
    differently: static runs of this harness moved by up to 0.4 pp between two)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def _add_machines(cfg: dict, other: dict) -> None:
    cfg["machines"] = sorted(set(report.machines(cfg)) | set(report.machines(other)))


class ResultUnreadable(Exception):
    """A result file that is missing, not JSON, or not shaped as this harness writes it."""


def read_result(path: Path) -> dict:
    """A result this harness wrote (JSON: config and hosts, each host's runs by arm), read as
    data only; ResultUnreadable says what is wrong with it and where."""
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise ResultUnreadable(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultUnreadable(f"{path}: not a JSON result ({exc})") from None
    if not (isinstance(result, dict) and isinstance(result.get("config"), dict)
            and isinstance(result["config"].get("command"), str)
            and isinstance(result.get("hosts"), dict)):
        raise ResultUnreadable(f"{path}: not a result of this harness (wants an object with "
                               "'config', holding its 'command', and 'hosts')")
    for host, h in result["hosts"].items():
        runs = h.get("runs") if isinstance(h, dict) else None
        if not (isinstance(runs, dict) and all(
                isinstance(rs, list) and all(isinstance(r, dict) and "seed" in r for r in rs)
                for rs in runs.values())):
            raise ResultUnreadable(f"{path}: host {host!r}: 'runs' must map each arm to a "
                                   "list of runs, each with its 'seed'")
        h.setdefault("unavailable", {})
    return result


def config_mismatch(ours: dict, theirs: dict, esper_settings: bool = True) -> str | None:
    """Why runs of two results cannot be compared as one experiment (or their Esper runs be
    taken as one Esper's), or None; Esper's settings are compared unless `esper_settings`
    is False (runs that read nothing of Esper's, see reads_esper). (Results from before
    --lr-schedule existed ran at a constant rate.)"""
    settings = report.ESPER_SETTINGS.items() if esper_settings else ()
    for key, default in (("epochs", None), ("quick", None), ("data", None), ("seed_base", None),
                         ("lr_schedule", "constant"), ("learning_rate", LEARNING_RATE),
                         ("stream_room", EARLIER_STREAM_ROOM), *settings):
        if key == "stream_room" and not _ran_stream(ours, theirs):
            continue  # decides nothing on a host without a residual stream
        if key in HEURISTIC_OPTIONS:
            continue  # compared with the heuristic, as the value the arms ran with
        if key == "heuristic":
            problem = _heuristic_mismatch(*_acting_heuristics(ours, theirs))
            if problem:
                return problem
            continue
        mine, other = ours.get(key, default), theirs.get(key, default)
        if mine != other:
            return f"config {key} differs: {mine} vs {other}"
    return None


# How a host's residual stream and the seeds share Kasmina's room for growth
# (esper.tolaria.budget): since 2026-12-07 the stream widens beside the seeds' room;
# results from before recorded nothing and ran with the stream's widenings inside it.
STREAM_ROOM = "beside"
EARLIER_STREAM_ROOM = "inside"

# Where the local heuristic's defaults differed, before results recorded them in full
# ("heuristic_defaults"), from today's: the seeds' first-epoch signal was opt-in, and
# compute was unpriced.
EARLIER_HEURISTIC_DEFAULTS = {"seed_first_epoch_pace": False, "flops_weight": 0.0}
# Fields added to the local heuristic since results began recording its defaults, at what
# the runs before them did (any other field added since counts at today's default).
ADDED_HEURISTIC_FIELDS = {"stream_hold_at_limit": True}


def heuristic_defaults(cfg: dict) -> dict:
    """The local heuristic's defaults a result ran with: those it recorded, or those of
    before they were recorded."""
    return {**dataclasses.asdict(LOCAL_HEURISTIC), **ADDED_HEURISTIC_FIELDS,
            **(cfg.get("heuristic_defaults") or EARLIER_HEURISTIC_DEFAULTS)}


def esper_heuristic(cfg: dict) -> dict:
    """Every field of the local heuristic that a result's esper arms ran with: its defaults
    with its --heuristic changes and the fields set by options of their own
    (HEURISTIC_OPTIONS), so that a run at a field's default and one that set it to that
    value by option are one Esper."""
    options = {key: cfg[key] for key in HEURISTIC_OPTIONS if cfg.get(key) is not None}
    return {**heuristic_defaults(cfg), **(cfg.get("heuristic") or {}), **options}


def _acting_heuristics(ours: dict, theirs: dict, of=esper_heuristic) -> tuple[dict, dict]:
    """Both results' heuristics (`of`: the esper arms', or heuristic_defaults), less the
    stream_* settings when neither ran a host with a residual stream (they decide nothing
    there: an MLP's runs are the same under any)."""
    mine, other = of(ours), of(theirs)
    if not _ran_stream(ours, theirs):
        mine, other = ({k: v for k, v in h.items() if not k.startswith("stream_")} for h in (mine, other))
    return mine, other


def _ran_stream(ours: dict, theirs: dict) -> bool:
    """Whether either result ran a host with a residual stream (or does not say its hosts)."""
    hosts = [cfg.get("hosts") for cfg in (ours, theirs)]
    return not all(hosts) or bool(STREAM_HOSTS & {h for hs in hosts for h in hs})


def _heuristic_mismatch(mine: dict, other: dict) -> str | None:
    fields = sorted(k for k in mine.keys() | other.keys() if mine.get(k) != other.get(k))
    if not fields:
        return None
    return "config heuristic differs: " + ", ".join(
        f"{k} {json.dumps(mine.get(k))} vs {json.dumps(other.get(k))}" for k in fields)


def _rate(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _heuristic_setting(text: str) -> tuple[str, int | float | bool]:
    """KEY=VALUE as one checked HeuristicConfig field (the checks of Tamiyo's heuristic file)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"want KEY=VALUE (a HeuristicConfig field), got {text!r}")
    try:
        doc = tomllib.loads(f"{key.strip()} = {value.strip()}")
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: VALUE must be a number or true/false") from None
    if len(doc) != 1:
        raise argparse.ArgumentTypeError(f"want one KEY=VALUE, got {text!r}")
    try:
        return next(iter(heuristic_overrides(doc, "HeuristicConfig").items()))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _weight(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _gflops(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (leave it out for no "
                                         f"budget), got {text!r}")
    return value


def _spacings(text: str) -> tuple[int, ...]:
    """Comma-separated positive epoch counts, each once, in increasing order."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"must be one or more epoch counts, e.g. 1,2,3; got {text!r}")
    return tuple(sorted({positive_int(t) for t in items}))


def _seed_param_fraction(text: str) -> float:
    """A growth room as KasminaConfig accepts it (its check, its message)."""
    try:
        return KasminaConfig(max_seed_param_fraction=float(text)).max_seed_param_fraction
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _depth(text: str) -> int:
    """A slot depth as KasminaConfig accepts it (its check, its message)."""
    depth = non_negative_int(text)
    try:
        return KasminaConfig(slot_depth=depth).slot_depth
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _family(host: str) -> str:
    """Which data a host trains on: Fashion-MNIST images, or Shakespeare's characters."""
    return "shakespeare" if host == "char" else "fashion-mnist"


def _load(family: str, quick: bool):
    if family == "shakespeare":
        return text.load(TEXT_BATCH_SIZE, quick=quick)
    return data_mod.load(BATCH_SIZE, quick=quick)


def spaced_schedule(result: dict) -> dict:
    """A result from before the schedule search (one "schedule" arm at one spacing, E/10 or
    --schedule-every N) with that arm named by its spacing, as the search names it, so
    spacings run at different times merge into one search."""
    cfg = result["config"]
    if isinstance(cfg.get("schedule_every"), list):
        return result
    every = cfg.get("schedule_every") or max(1, cfg["epochs"] // 10)
    ran = False
    for h in result["hosts"].values():
        for table in (h["runs"], h["unavailable"]):
            if "schedule" in table:
                table[schedule_arm(every)] = table.pop("schedule")
                ran = True
    cfg["schedule_every"] = [every] if ran else []
    return result


# Arms whose runs read nothing of Esper's run (its size, architecture, growth or FLOPs) nor
# of the heuristic: their runs join a result whatever its Esper's settings. (A static large
# run with a point at Esper's FLOPs, made under a constant rate, read Esper's FLOPs.)
ESPER_FREE_ARMS = frozenset({"static-small", "static-large"})


def reads_esper(result: dict) -> bool:
    """Whether any run of `result` read Esper's run or settings (see ESPER_FREE_ARMS)."""
    return any(arm not in ESPER_FREE_ARMS or any("esper-flops" in (r.get("milestones") or {}) for r in runs)
               for h in result["hosts"].values() for arm, runs in h["runs"].items())


def only_arms(result: dict, arms: list[str]) -> dict:
    """`result` with the runs of `arms` only ("schedule": each of its spacings)."""
    def wanted(arm: str) -> bool:
        return arm in arms or ("schedule" in arms and spacing_of(arm) is not None)
    hosts = {host: {**h, "runs": {a: rs for a, rs in h["runs"].items() if wanted(a)},
                    "unavailable": {a: why for a, why in h["unavailable"].items() if wanted(a)}}
             for host, h in result["hosts"].items()}
    return {**result, "hosts": hosts}


def merge(result: dict, other: dict) -> str | None:
    """Put `other`'s runs into `result`, seed by seed: a seed `other` ran replaces that seed's
    run of the arm, a seed it adds is added (so an arm run later, or seeds run in another
    process, join one result). Why not, or None."""
    problem = config_mismatch(result["config"], other["config"], esper_settings=reads_esper(other)) \
        or _defaults_mismatch(result, other)
    if problem:
        return problem
    for host, h in other["hosts"].items():
        if host not in result["hosts"]:  # a host family measured in a run of its own
            result["hosts"][host] = {"runs": {}, "unavailable": {}, "summary": {}}
            result["config"]["hosts"] = [*result["config"]["hosts"], host]
        target = result["hosts"][host]
        for arm, runs in h["runs"].items():
            by_seed = {r["seed"]: r for r in target["runs"].get(arm, [])}
            by_seed.update({r["seed"]: r for r in runs})
            target["runs"][arm] = [by_seed[s] for s in sorted(by_seed)]
            target["unavailable"].pop(arm, None)
        for arm, why in h["unavailable"].items():
            if arm not in target["runs"]:
                target["unavailable"][arm] = why
        target["summary"] = report.summarise(target["runs"])
    spacings = set(result["config"].get("schedule_every") or []) | set(other["config"].get("schedule_every") or [])
    result["config"]["schedule_every"] = sorted(spacings)
    # Every command behind `other`'s runs: its own, and those of results merged into it.
    result["config"].setdefault("merged", []).extend(
        [other["config"]["command"], *other["config"].get("merged", [])])
    _add_machines(result["config"], other["config"])
    seeds = max((len({r["seed"] for runs in h["runs"].values() for r in runs})
                 for h in result["hosts"].values()), default=0)
    result["config"]["seeds"] = result["config"]["seeds_done"] = seeds
    return None


def _defaults_mismatch(result: dict, other: dict) -> str | None:
    """Why `other`'s runs of the arms whose policy follows the local heuristic's defaults,
    not the esper arm's settings, cannot join `result`: they ran under other defaults."""
    arms = sorted({arm for h in other["hosts"].values() for arm in h["runs"] if follows_defaults(arm)})
    if not arms:
        return None
    problem = _heuristic_mismatch(*_acting_heuristics(result["config"], other["config"],
                                                      of=heuristic_defaults))
    return problem and f"{problem} in the local heuristic's defaults, which its " \
        f"{', '.join(arms)} runs follow"


def _write(result: dict, paths: dict) -> None:
    paths["json"].write_text(json.dumps(result, indent=1))


def _render(result: dict, paths: dict) -> None:
    paths["md"].write_text(report.markdown(result))
    report.plot(result, paths["png"])
