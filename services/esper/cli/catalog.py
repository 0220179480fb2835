"""`esper catalog`: browse Urza's blueprint catalogue and kernel library.

    esper catalog list [--family F] [--state S] [--tag T]...     blueprints
    esper catalog show NAME@VERSION                              one blueprint and its kernels
    esper catalog kernels [--blueprint REF] [--device D]         kernels
    esper catalog search --channels C [--kind features] [--max-params N] ...
                                                                 kernels that fit, best first

Urza is `--urza HOST:PORT`, else $ESPER_URZA_ADDRESS, else the local stack's Urza
(`esper up`, state under $ESPER_STATE_DIR or ./.esper), else 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from esper.cli.addresses import checked_address, resolve_address
from esper.cli.choices import enum_choices
from esper.cli.errors import UsageError
from esper.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import urza_pb2
from esper.rpc.clients import UrzaClient
from esper.rpc.errors import ServiceError

ADDRESS_ENV = "ESPER_URZA_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1:50051"
# Seconds a call waits for Urza; a catalogue query answers in milliseconds.
DEFAULT_TIMEOUT_S = 10.0
# Items per ListBlueprints/ListKernels call while paging through everything.
PAGE_SIZE = 200
FAMILIES = enum_choices(bp.BlueprintFamily, "BLUEPRINT_FAMILY_")
STATES = enum_choices(bp.BlueprintState, "BLUEPRINT_STATE_")
KERNEL_STATES = enum_choices(kp.KernelState, "KERNEL_STATE_")
KINDS = enum_choices(common.SlotKind, "SLOT_KIND_")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("catalog", help="browse Urza's blueprints and kernels",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="catalog_action", metavar="ACTION")
    actions.required = True
    common_args = argparse.ArgumentParser(add_help=False)
    common_args.add_argument("--urza", default=None, metavar="HOST:PORT",
                             help=f"Urza's address (default ${ADDRESS_ENV}, the local stack, "
                                  f"{DEFAULT_ADDRESS})")
    common_args.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                             help="seconds to wait for Urza")

    listing = actions.add_parser("list", parents=[common_args], help="list blueprints")
    listing.add_argument("--family", choices=sorted(FAMILIES))
    listing.add_argument("--state", choices=sorted(STATES))
    listing.add_argument("--tag", action="append", default=[], help="only with this tag (repeatable)")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", parents=[common_args], help="one blueprint in detail")
    show.add_argument("ref", metavar="NAME@VERSION")
    show.set_defaults(func=run_show)

    kernels = actions.add_parser("kernels", parents=[common_args], help="list kernels")
    kernels.add_argument("--blueprint", default="", metavar="NAME@VERSION")
    kernels.add_argument("--device", default="")
    kernels.add_argument("--state", choices=sorted(KERNEL_STATES))
    kernels.set_defaults(func=run_kernels)

    search = actions.add_parser("search", parents=[common_args],
                                help="kernels that fit a slot and a budget, best first")
    search.add_argument("--channels", type=positive_int, required=True, help="slot width C")
    search.add_argument("--kind", choices=sorted(KINDS), default="features", help="slot kind")
    search.add_argument("--device", default="cpu")
    search.add_argument("--max-params", type=non_negative_int, default=0)
    search.add_argument("--max-flops", type=non_negative_int, default=0)
    search.add_argument("--max-latency-ms", type=non_negative_float, default=0.0)
    search.add_argument("--max-memory", type=non_negative_int, default=0, help="bytes")
    search.add_argument("--max-risk", type=non_negative_float, default=0.0, help="in [0, 1]")
    search.add_argument("--family", action="append", choices=sorted(FAMILIES), default=[])
    search.add_argument("--capability", action="append", default=[],
                        help="a capability of the training process (repeatable)")
    search.add_argument("--limit", type=non_negative_int, default=10)
    search.set_defaults(func=run_search)


# -- argument types ------------------------------------------------------------------------


def _ref(text: str) -> str:
    # Imported here: esper.blueprints pulls in torch, which `esper --help` should not wait for.
    from esper.blueprints.errors import BlueprintError
    from esper.blueprints.refs import parse_ref

    try:
        parse_ref(text)
    except BlueprintError as exc:
        raise UsageError(f"NAME@VERSION: {exc.message}") from None
    return text


def urza_address(flag: str | None) -> str:
    return checked_address("--urza", resolve_address(flag, ADDRESS_ENV, "urza") or DEFAULT_ADDRESS)


# -- calls ---------------------------------------------------------------------------------
def _call(args: argparse.Namespace, work) -> int:
    """Run `await work(urza)` with a client of Urza (each call waits --timeout seconds)."""
    address = urza_address(args.urza)

    async def session() -> None:
        async with UrzaClient(address, timeout_s=args.timeout) as urza:
            await work(urza)

    try:
        asyncio.run(session())
    except ServiceError as exc:
        details = f"cannot reach Urza at {address}: {exc.details}" if exc.unreachable else exc.details
        print(f"esper catalog: error: {exc.code.name}: {details}", file=sys.stderr)
        return 1
    return 0


def run_list(args: argparse.Namespace) -> int:
    request = urza_pb2.ListBlueprintsRequest(
        family=FAMILIES[args.family] if args.family else 0,
        state=STATES[args.state] if args.state else 0, tags=args.tag, page_size=PAGE_SIZE)

    async def work(urza: UrzaClient) -> None:
        records = [r async for r in urza.list_blueprints(request)]
        print(table(("BLUEPRINT", "FAMILY", "STATE", "SLOTS", "RISK", "GAIN", "USED", "NEEDS"),
                    [_blueprint_cells(r) for r in records]))
        print(f"{len(records)} blueprint(s)")
    return _call(args, work)


def _blueprint_cells(record: bp.BlueprintRecord) -> tuple:
    spec, md = record.spec, record.spec.metadata
    return (f"{spec.name}@{spec.version}", _short(bp.BlueprintFamily, spec.family),
            _short(bp.BlueprintState, record.state),
            ",".join(_short(common.SlotKind, k) for k in spec.slot_kinds),
            f"{md.risk_score:.2f}", f"{md.past_accuracy_gain_estimate:+.4f}", record.times_used,
            ",".join(md.requires_capability) or "-")


def run_show(args: argparse.Namespace) -> int:
    ref = _ref(args.ref)

    async def work(urza: UrzaClient) -> None:
        record = await urza.get_blueprint(ref)
        kernels = [k async for k in urza.list_kernels(
            urza_pb2.ListKernelsRequest(blueprint_ref=ref, page_size=PAGE_SIZE))]
        print(describe_blueprint(record))
        print()
        print(table(KERNEL_HEADER, [_kernel_cells(k) for k in kernels]) if kernels else "no kernels yet")
    return _call(args, work)


def describe_blueprint(record: bp.BlueprintRecord) -> str:
    spec, md = record.spec, record.spec.metadata
    lines = [
        f"blueprint     {spec.name}@{spec.version}",
        f"family        {_short(bp.BlueprintFamily, spec.family)}",
        f"state         {_short(bp.BlueprintState, record.state)}"
        + (f" ({record.reason})" if record.reason else ""),
        f"slot kinds    {', '.join(_short(common.SlotKind, k) for k in spec.slot_kinds)}",
        f"params        {md.params_formula or '-'}",
        f"flops/pos     {md.flops_formula or '-'}",
        f"risk          {md.risk_score:.2f}   safe: {md.is_safe_action}   mergeable: {md.mergeable}",
        f"needs         {', '.join(md.requires_capability) or '-'}",
        f"tags          {', '.join(md.tags) or '-'}",
        (f"field reports used {record.times_used}, fossilized {record.fossilized_count}, "
         f"culled {record.culled_count}, gain estimate {md.past_accuracy_gain_estimate:+.4f}"),
        f"graph digest  {record.graph_digest}",
        "graph:",
    ]
    for node in spec.graph.nodes:
        attrs = ", ".join(f"{k}={_attr(v)}" for k, v in sorted(node.attrs.items()))
        op = bp.OpType.Name(node.op).removeprefix("OP_TYPE_")
        lines.append(f"  {node.id:<12} {op:<18} <- {', '.join(node.inputs):<16} {attrs}")
    lines.append(f"  output: {spec.graph.output}")
    if md.description:
        lines.append(f"description   {md.description}")
    return "\n".join(lines)


def _attr(value: bp.AttrValue) -> str:
    kind = value.WhichOneof("value")
    return str(getattr(value, kind)) if kind else "?"


KERNEL_HEADER = ("KERNEL", "BLUEPRINT", "DEVICE", "DTYPE", "SHAPE", "PARAMS", "P99 MS", "BYTES", "STATE")


def _kernel_cells(kernel: kp.KernelArtifact) -> tuple:
    shape = kernel.target.shape
    dims = [shape.channels] + [d for d in (shape.length, shape.height, shape.width) if d]
    return (kernel.kernel_id, kernel.blueprint_ref, kernel.target.device,
            _short(common.Dtype, kernel.target.dtype),
            f"{_short(common.SlotKind, shape.kind)}[{'x'.join(map(str, dims))}]",
            kernel.stats.params, f"{kernel.stats.latency_p99_ms:.3f}", kernel.size_bytes,
            _short(kp.KernelState, kernel.state))


def run_kernels(args: argparse.Namespace) -> int:
    ref = _ref(args.blueprint) if args.blueprint else ""
    request = urza_pb2.ListKernelsRequest(blueprint_ref=ref, device=args.device, page_size=PAGE_SIZE,
                                          state=KERNEL_STATES[args.state] if args.state else 0)

    async def work(urza: UrzaClient) -> None:
        kernels = [k async for k in urza.list_kernels(request)]
        print(table(KERNEL_HEADER, [_kernel_cells(k) for k in kernels]))
        print(f"{len(kernels)} kernel(s)")
    return _call(args, work)


def run_search(args: argparse.Namespace) -> int:
    if args.max_risk > 1:
        raise UsageError(f"--max-risk: {args.max_risk} is not in [0, 1]")
    request = urza_pb2.SearchKernelsRequest(
        shape=common.SlotShape(kind=KINDS[args.kind], channels=args.channels),
        device=args.device,
        budget=urza_pb2.CostBudget(max_params=args.max_params, max_flops=args.max_flops,
                                   max_latency_ms=args.max_latency_ms,
                                   max_memory_bytes=args.max_memory, max_risk=args.max_risk),
        families=[FAMILIES[f] for f in args.family], capabilities=args.capability, limit=args.limit)

    async def work(urza: UrzaClient) -> None:
        candidates = await urza.search_kernels(request)
        rows = [(i, f"{c.score:.4g}", c.kernel.kernel_id, c.kernel.blueprint_ref,
                 _short(bp.BlueprintFamily, c.blueprint.family), c.kernel.stats.params,
                 c.kernel.stats.flops, f"{c.kernel.stats.latency_p99_ms:.3f}",
                 f"{c.blueprint.metadata.risk_score:.2f}")
                for i, c in enumerate(candidates, start=1)]
        print(table(("#", "SCORE", "KERNEL", "BLUEPRINT", "FAMILY", "PARAMS", "FLOPS", "P99 MS", "RISK"),
                    rows))
        print(f"{len(rows)} candidate(s)")
    return _call(args, work)


# -- output --------------------------------------------------------------------------------
def _short(wrapper, value: int) -> str:
    name = wrapper.Name(value) if value in wrapper.values() else str(value)
    prefix = wrapper.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return name.removeprefix(prefix)


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """Left-aligned text columns, two spaces apart."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)
