"""`esper up`, `esper down`, `esper status`: the local stack (PostgreSQL, broker, object
store and the four servers) on loopback under a state directory."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from esper.cli.addresses import DEFAULT_STATE_DIR, STATE_DIR_ENV
from esper.runtime.infra.errors import InfraConfigError, InfraError
from esper.runtime.infra.paths import log_path
from esper.runtime.infra.process import tail
from esper.runtime.stack import HEALTHY, down, format_table, status, up
from esper.runtime.stack.lifecycle import exited
from esper.runtime.stack.state import check_replicas, load_state, port_names
from esper.runtime.stack.tls import tls_dir

# How often `esper up --foreground` checks that every component is still alive.
WATCH_INTERVAL_S = 1.0
# The setting behind `esper up --tamiyo-replicas` (the flag wins).
REPLICAS_ENV = "ESPER_TAMIYO_REPLICAS"
# Exit codes: 2 for bad input (argparse's convention), 1 for a failure to start or a
# component that is not healthy.
EXIT_USAGE, EXIT_FAILURE = 2, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    up_parser = subparsers.add_parser("up", help="start the local stack and wait until healthy")
    _add_state_dir(up_parser)
    up_parser.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached; Ctrl-C (or SIGTERM) stops the whole stack",
    )
    up_parser.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, default=None,
        help="mutual TLS and auth between every part, certificates under STATE_DIR/tls "
             "(remembered; --no-tls turns it off; default: as the last up left it)",
    )
    up_parser.add_argument(
        "--tamiyo-replicas", type=int, default=None, metavar="N",
        help=f"run N Tamiyo processes sharing their runs in PostgreSQL, behind one address list "
             f"(remembered; default: ${REPLICAS_ENV}, else as the last up left it, else 1)",
    )
    up_parser.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="NAME=PORT",
        help=f"pin a port (remembered in stack.json); NAME is one of: {', '.join(port_names())}",
    )
    up_parser.set_defaults(func=_guarded("up", run_up))
    down_parser = subparsers.add_parser("down", help="stop every process of the local stack")
    _add_state_dir(down_parser)
    down_parser.set_defaults(func=_guarded("down", run_down))
    status_parser = subparsers.add_parser("status", help="show each component's health")
    _add_state_dir(status_parser)
    status_parser.add_argument(
        "--address", metavar="COMPONENT", default=None,
        help="print only COMPONENT's address (for scripts: grpcurl $(esper status --address urza) …)",
    )
    status_parser.set_defaults(func=_guarded("status", run_status))


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help=f"state directory (default: ${STATE_DIR_ENV} or ./{DEFAULT_STATE_DIR})",
    )


def state_dir_of(args: argparse.Namespace) -> Path:
    chosen = args.state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().resolve()


def parse_port_pins(pins: list[str]) -> dict[str, str]:
    """`["postgres=5432", ...]` -> `{"postgres": "5432"}`; malformed pins are usage errors."""
    result: dict[str, str] = {}
    for pin in pins:
        name, sep, value = pin.partition("=")
        if not sep or not name.strip():
            raise InfraConfigError(f"--port {pin!r}: expected NAME=PORT, e.g. postgres=5432")
        result[name.strip()] = value.strip()
    return result


def _guarded(command: str, run: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Print launcher errors as one clear message instead of a traceback."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except InfraConfigError as exc:
            print(f"esper {command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except InfraError as exc:
            print(f"esper {command}: failed: {exc}", file=sys.stderr)
            return EXIT_FAILURE

    return guarded


def run_up(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    replicas = args.tamiyo_replicas if args.tamiyo_replicas is not None else os.environ.get(REPLICAS_ENV) or None
    if replicas is not None:
        replicas = check_replicas(replicas, "--tamiyo-replicas" if args.tamiyo_replicas is not None else REPLICAS_ENV)
    result = up(state_dir, parse_port_pins(args.port), tls=args.tls, tamiyo_replicas=replicas)
    print(format_table(result.statuses))
    print(security_line(state_dir))
    print(tamiyo_line(state_dir))
    kept = len(result.statuses) - len(result.started)
    print(
        f"\nstack up in {result.elapsed_s:.1f} s (infrastructure {result.infra_s:.1f} s) "
        f"under {state_dir} "
        f"({len(result.started)} started, {kept} already running); logs in {state_dir}/logs"
    )
    if any(s.health != HEALTHY for s in result.statuses):
        return EXIT_FAILURE
    if args.foreground:
        return _stay_in_foreground(state_dir)
    return 0


def _stay_in_foreground(state_dir: Path) -> int:
    """Watch the stack until a signal (stop it, exit 0) or a component dies (report it,
    stop the rest, exit 1)."""
    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    print("running in the foreground; Ctrl-C stops the stack", flush=True)
    exit_code = 0
    try:
        while not stop_requested:
            dead = exited(state_dir)
            if dead:
                for name in dead:
                    print(f"esper up: {name} exited; last lines of its log:", file=sys.stderr)
                    print(tail(log_path(state_dir, name)), file=sys.stderr)
                exit_code = EXIT_FAILURE
                break
            time.sleep(WATCH_INTERVAL_S)
    finally:
        stopped = down(state_dir)
        print(f"stopped: {', '.join(stopped) or 'nothing'}", flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_code


def run_down(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    stopped = down(state_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing running under {state_dir}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    state_dir = state_dir_of(args)
    statuses = status(state_dir)
    if not statuses:
        print(f"no stack under {state_dir} (start one with `esper up`)")
        return EXIT_FAILURE
    if args.address is not None:
        return _print_address(statuses, args.address, state_dir)
    print(format_table(statuses))
    print(security_line(state_dir))
    print(tamiyo_line(state_dir))
    return 0 if all(s.health == HEALTHY for s in statuses) else EXIT_FAILURE


def security_line(state_dir: Path) -> str:
    """What `esper up` and `esper status` say about transport security."""
    state = load_state(state_dir)
    if state is None or not state.tls:
        return "tls: off (plaintext on 127.0.0.1, auth off; `esper up --tls` turns mutual TLS on)"
    return (f"tls: on (mutual TLS between every part, auth on; certificates in {tls_dir(state_dir)}; "
            "esper commands use its admin certificate)")


def tamiyo_line(state_dir: Path) -> str:
    """Where clients reach Tamiyo: its one address, or the address list of its replicas."""
    state = load_state(state_dir)
    if state is None:
        return ""
    if state.tamiyo_replicas == 1:
        return f"tamiyo: 1 replica at {state.tamiyo_target()} (`esper up --tamiyo-replicas N` runs more)"
    return (f"tamiyo: {state.tamiyo_replicas} replicas sharing runs in PostgreSQL; clients use the address list "
            f"{state.tamiyo_target()} (round robin; a session resumes on any replica)")


def _print_address(statuses: list, name: str, state_dir: Path) -> int:
    by_name = {s.name: s for s in statuses}
    if name not in by_name:
        print(f"esper status: error: --address: unknown component {name!r} "
              f"(choose from {', '.join(by_name)})", file=sys.stderr)
        return EXIT_USAGE
    state = load_state(state_dir)
    # Tamiyo's address is that of all its replicas (the one a client should use).
    print(state.tamiyo_target() if name == "tamiyo" and state is not None else by_name[name].address)
    return 0
