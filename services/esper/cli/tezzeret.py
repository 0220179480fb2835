"""`esper tezzeret`: the forge from the command line.

    esper tezzeret worker [--count N] [--config FILE] [config flags]   standalone compile workers
    esper tezzeret submit NAME@VERSION --channels C [--kind K] [--length L]
                          [--height H --width W] [--device cpu] [--dtype float32] [--wait]
    esper tezzeret jobs [--blueprint REF] [--stage S] [--limit N]

`worker` joins the consumer group of `esper.compile.requests` with the same settings as
`esper serve tezzeret` (flags, ESPER_* env vars, the [tezzeret] TOML table). `submit` and
`jobs` talk to the Tezzeret server: `--tezzeret HOST:PORT`, else $ESPER_TEZZERET_ADDRESS,
else the local stack's Tezzeret (`esper up`), else 127.0.0.1:50052.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from esper.blueprints import BlueprintError, parse_ref
from esper.cli.addresses import checked_address, resolve_address
from esper.cli.choices import enum_choices
from esper.cli.errors import UsageError
from esper.cli.numbers import positive_float, positive_int
from esper.leyline.v1 import common_pb2, kernel_pb2, telemetry_pb2, tezzeret_pb2
from esper.rpc.clients import TezzeretClient
from esper.rpc.errors import ServiceError
from esper.runtime.config import ConfigError, add_config_flags, load_config, overrides_from_args

ADDRESS_ENV = "ESPER_TEZZERET_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:50052"
# Seconds a unary call waits for Tezzeret; job queries answer in milliseconds.
DEFAULT_TIMEOUT_S = 10.0
KINDS = enum_choices(common_pb2.SlotKind, "SLOT_KIND_")
DTYPES = enum_choices(common_pb2.Dtype, "DTYPE_")
STAGES = enum_choices(telemetry_pb2.CompileStage, "COMPILE_STAGE_")


def register(subparsers: argparse._SubParsersAction) -> None:
    from esper.tezzeret.config import TezzeretConfig

    parser = subparsers.add_parser("tezzeret", help="compile workers, submit compiles, list jobs",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="tezzeret_action", metavar="ACTION")
    actions.required = True

    worker = actions.add_parser("worker", help="run standalone compile workers until stopped")
    worker.add_argument("--count", type=positive_int, default=1, help="workers in this process")
    worker.add_argument("--config", dest="config_file", default=None, help="TOML config file")
    add_config_flags(worker, TezzeretConfig)
    worker.set_defaults(func=run_worker)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--tezzeret", default=None, metavar="HOST:PORT",
                        help=f"Tezzeret's address (default ${ADDRESS_ENV}, the local stack, "
                             f"{DEFAULT_ADDRESS})")
    client.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S)

    submit = actions.add_parser("submit", parents=[client], help="queue a compile job")
    submit.add_argument("ref", metavar="NAME@VERSION", type=_ref)
    submit.add_argument("--channels", type=positive_int, required=True, help="slot width C")
    submit.add_argument("--kind", choices=sorted(KINDS), default="features")
    submit.add_argument("--length", type=positive_int, default=0, help="tokens or length")
    submit.add_argument("--height", type=positive_int, default=0)
    submit.add_argument("--width", type=positive_int, default=0)
    submit.add_argument("--device", default="cpu")
    submit.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.set_defaults(func=run_submit)

    jobs = actions.add_parser("jobs", parents=[client], help="list compile jobs, newest first")
    jobs.add_argument("--blueprint", default="", metavar="NAME@VERSION")
    jobs.add_argument("--stage", choices=sorted(STAGES))
    jobs.add_argument("--limit", type=positive_int, default=50)
    jobs.set_defaults(func=run_jobs)


def _ref(text: str) -> str:
    try:
        parse_ref(text)
    except BlueprintError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


# ---- worker ------------------------------------------------------------------------------

def run_worker(args: argparse.Namespace) -> int:
    from esper.runtime.logs import configure_logging
    from esper.runtime.registry import known_config_tables
    from esper.runtime.server import StartupError
    from esper.tezzeret.config import TezzeretConfig

    try:
        config = load_config(TezzeretConfig, "tezzeret", toml_path=args.config_file,
                             overrides=overrides_from_args(args, TezzeretConfig),
                             known_tables=known_config_tables())
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    configure_logging(config.log_format, config.log_level)
    try:
        asyncio.run(_work(config, args.count))
    except StartupError as exc:
        print(f"esper tezzeret worker: {exc}", file=sys.stderr)
        return 2
    return 0


async def _work(config, count: int) -> None:
    from esper.tezzeret.deps import connect

    deps = await connect(config)
    try:
        await deps.start_workers(count)
        print(f"tezzeret: {count} worker(s) in group {config.consumer_group} on "
              f"{config.kafka_bootstrap}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await deps.close()


# ---- client commands ---------------------------------------------------------------------

def tezzeret_address(flag: str | None) -> str:
    return checked_address("--tezzeret", resolve_address(flag, ADDRESS_ENV, "tezzeret") or DEFAULT_ADDRESS)


def _call(args: argparse.Namespace, work) -> int:
    """Run `await work(tezzeret)` with a client of Tezzeret (unary calls wait --timeout)."""
    address = tezzeret_address(args.tezzeret)

    async def session() -> None:
        async with TezzeretClient(address, timeout_s=args.timeout) as tezzeret:
            await work(tezzeret)

    try:
        asyncio.run(session())
    except ServiceError as exc:
        if exc.unreachable:
            print(f"esper tezzeret: Tezzeret at {address} unavailable: {exc.details}", file=sys.stderr)
            return 1
        raise UsageError(f"{exc.code.name}: {exc.details}") from None
    return 0


def format_job(job: tezzeret_pb2.CompileJob) -> str:
    stage = telemetry_pb2.CompileStage.Name(job.stage).removeprefix("COMPILE_STAGE_")
    kernels = ",".join(job.kernel_ids) or "-"
    return (f"{job.job_id}  {job.blueprint_ref:28s} {stage:14s} attempts={job.attempts} "
            f"kernels={kernels}  {job.detail}")


def _target(args: argparse.Namespace) -> kernel_pb2.KernelTarget:
    shape = common_pb2.SlotShape(kind=KINDS[args.kind], channels=args.channels,
                                 length=args.length, height=args.height, width=args.width)
    return kernel_pb2.KernelTarget(device=args.device, dtype=DTYPES[args.dtype], shape=shape)


def run_submit(args: argparse.Namespace) -> int:
    async def work(tezzeret: TezzeretClient) -> None:
        job = await tezzeret.submit(args.ref, [_target(args)])
        print(format_job(job), flush=True)
        if args.wait:
            async for update in tezzeret.watch_job(job.job_id):
                print(format_job(update), flush=True)

    return _call(args, work)


def run_jobs(args: argparse.Namespace) -> int:
    async def work(tezzeret: TezzeretClient) -> None:
        shown = 0
        request = tezzeret_pb2.ListJobsRequest(
            blueprint_ref=args.blueprint, stage=STAGES[args.stage] if args.stage else 0)
        async for job in tezzeret.list_jobs(request, limit=args.limit):
            print(format_job(job))
            shown += 1
        if not shown:
            print("no jobs")

    return _call(args, work)
