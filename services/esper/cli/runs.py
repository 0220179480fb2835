"""`esper runs`: run history from Nissa.

    esper runs                      recent runs
    esper runs show RUN             a run's summary: epochs, each seed's life, decisions, alerts
    esper runs compare RUN OTHER    two runs' epochs side by side (e.g. grown vs static)
    esper runs plot RUN -o out.png  accuracy and params per epoch with seed events marked
                                    (--baseline OTHER draws a second run's accuracy)

Nissa is `--nissa HOST:PORT`, else $ESPER_NISSA_ADDRESS, else the local stack's Nissa
(`esper up`, state under $ESPER_STATE_DIR or ./.esper).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc

from esper.cli import addresses, run_views
from esper.cli.errors import UsageError
from esper.leyline.lifecycle import stage_name
from esper.leyline.v1 import control_pb2, nissa_pb2
from esper.rpc.clients import NissaClient
from esper.rpc.errors import ServiceError

ADDRESS_ENV = "ESPER_NISSA_ADDRESS"
# An RPC to Nissa taking longer than this means it is down or stuck.
RPC_TIMEOUT_S = 10.0
# Runs listed by default.
DEFAULT_LIMIT = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="run history from Nissa",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_address(parser)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="runs to list")
    parser.set_defaults(func=run_list)
    actions = parser.add_subparsers(dest="runs_action", metavar="ACTION")
    show = actions.add_parser("show", help="a run's summary, including its seed timeline")
    _add_address(show)
    show.add_argument("run_id", metavar="RUN")
    show.add_argument("--transitions", action="store_true",
                      help="also list every seed transition as Nissa recorded it")
    show.set_defaults(func=run_show)
    compare = actions.add_parser("compare", help="two runs' epochs side by side")
    _add_address(compare)
    compare.add_argument("run_id", metavar="RUN")
    compare.add_argument("other_run_id", metavar="OTHER")
    compare.set_defaults(func=run_compare)
    plot = actions.add_parser("plot", help="write a PNG of a run's curves and seed events")
    _add_address(plot)
    plot.add_argument("run_id", metavar="RUN")
    plot.add_argument("-o", "--output", required=True, help="PNG file to write")
    plot.add_argument("--baseline", default=None, metavar="OTHER",
                      help="also draw this run's accuracy and params (e.g. the static host)")
    plot.set_defaults(func=run_plot)


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nissa",
        default=argparse.SUPPRESS,
        help=f"Nissa HOST:PORT (default: ${ADDRESS_ENV} or the local stack)",
    )


def resolve_address(args: argparse.Namespace) -> str:
    address = addresses.resolve_address(getattr(args, "nissa", None), ADDRESS_ENV, "nissa")
    if not address:
        raise UsageError(f"no Nissa address: pass --nissa, set ${ADDRESS_ENV} or run `esper up`")
    return address


def _call(args: argparse.Namespace, work):
    """`await work(nissa)` with a client of Nissa; its failures as usage errors."""
    address = resolve_address(args)

    async def session():
        async with NissaClient(address, timeout_s=RPC_TIMEOUT_S) as nissa:
            return await work(nissa)

    try:
        return asyncio.run(session())
    except ServiceError as exc:
        if exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
            raise UsageError(exc.details) from None
        raise UsageError(str(exc)) from None


def _summaries(args: argparse.Namespace, *run_ids: str) -> list[nissa_pb2.GetRunSummaryResponse]:
    async def work(nissa: NissaClient):
        return [await nissa.get_run_summary(run_id) for run_id in run_ids]
    return _call(args, work)




def run_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise UsageError("--limit: must be within [1, 1000]")
    async def work(nissa: NissaClient) -> list[nissa_pb2.RunInfo]:
        return [run async for run in nissa.list_runs(
            nissa_pb2.ListRunsRequest(page_size=args.limit), limit=args.limit)]

    runs = _call(args, work)
    print(
        f"{'RUN':<28} {'LAST EVENT':<20} {'STEP':>8} {'EPOCH':>5} {'VAL ACC':>7} "
        f"{'EVENTS':>8} {'FOSSIL':>6} {'CULLED':>6}"
    )
    for run in runs:
        when = run.last_event_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{run.run_id[:28]:<28} {when:<20} {run.last_step:>8} {run.last_epoch:>5} "
            f"{run.last_val_accuracy:>7.3f} {run.event_count:>8} {run.fossilized:>6} "
            f"{run.culled:>6}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    (s,) = _summaries(args, args.run_id)
    run = s.run
    print(
        f"run {run.run_id}: {run.event_count} events, step {run.last_step}, epoch "
        f"{run.last_epoch}, val accuracy {run_views.measured(run.last_val_accuracy)}, "
        f"{run.fossilized} fossilized, {run.culled} culled"
    )
    print("\nepochs:")
    print(
        f"  {'EPOCH':>5} {'STEP':>8} {'TRAIN LOSS':>10} {'VAL LOSS':>10} {'VAL ACC':>7} "
        f"{'PARAMS':>10} {'SEED P':>8} {'LIVE':>4}"
    )
    for p in s.epochs:
        print(
            f"  {p.epoch:>5} {p.step:>8} {p.train_loss:>10.4f} {p.val_loss:>10.4f} "
            f"{p.val_accuracy:>7.4f} {p.total_params:>10} {p.seed_params:>8} "
            f"{p.live_seeds:>4}"
        )
    lives = run_views.seed_lives(list(s.seed_timeline))
    print(f"\nseeds ({len(lives)} germinated; stage@step it began):")
    for life in lives:
        print(f"  {life}")
    if args.transitions:
        print("\nseed transitions:")
        for t in s.seed_timeline:
            print(
                f"  step {t.step:>8}  {t.seed_id or '?'} @ {t.slot_id or '?'}: "
                f"{stage_name(t.from_stage)} -> {stage_name(t.to_stage)}  ({t.reason or 'no reason'})"
                f"{'  ' + t.blueprint_ref if t.blueprint_ref else ''}"
            )
    print("\ndecisions:")
    for record in s.decisions:
        d = record.decision
        ack = (
            control_pb2.AckStatus.Name(record.ack.status).removeprefix("ACK_STATUS_")
            + (f" ({record.ack.reason})" if record.ack.reason else "")
            if record.HasField("ack")
            else "no ack"
        )
        print(
            f"  step {d.issued_at_step:>8}  {d.WhichOneof('action') or '?'} {d.decision_id}: {ack}"
        )
    print("\nfield reports:")
    for f in s.field_reports:
        print(
            f"  {f.seed_id} {f.blueprint_ref}: {stage_name(f.final_stage)}, val acc "
            f"{run_views.measured(f.val_accuracy_before)} -> "
            f"{run_views.measured(f.val_accuracy_after)}, "
            f"+{f.params_added} params"
        )
    print("\nalerts:")
    for a in s.alerts:
        print(
            f"  {a.fired_at.ToJsonString()} {a.rule}: {a.message}"
            f"{' (acknowledged)' if a.acknowledged else ''}"
        )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    summaries = _summaries(args, args.run_id, args.other_run_id)
    print(run_views.compare_runs(*summaries))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise UsageError("--output: must name a .png file")
    if not output.parent.exists():
        raise UsageError(f"--output: directory {output.parent} does not exist")
    summary, *others = _summaries(args, args.run_id, *([args.baseline] if args.baseline else []))
    baseline = others[0] if others else None
    from esper.nissa.plot import plot_run  # matplotlib is slow to import: only here

    plot_run(summary, output, baseline=baseline)
    print(f"wrote {output}")
    return 0
