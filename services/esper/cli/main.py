"""`esper` entry point. Each subcommand lives in its own module under esper.cli and
exposes `register(subparsers)`, which adds its parser and sets `func` (returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from esper.cli.errors import UsageError
from esper.cli.security import use_stack_tls

# Subcommand modules, in the order `esper --help` lists them. One of ours that fails to import
# is a bug: the error propagates. A missing third-party module means the light client
# install (`pip install esper`), which has no servers and no command line.
SUBCOMMAND_MODULES = (
    "esper.cli.serve",
    "esper.cli.stack",
    "esper.cli.certs",
    "esper.cli.oona",
    "esper.cli.runs",
    "esper.cli.catalog",
    "esper.cli.tezzeret",
    "esper.cli.train",
    "esper.cli.tamiyo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esper", description="Esper: morphogenetic training platform"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


# What a shell reports for a tool killed by SIGPIPE (128 + 13): `esper … | head` ends as
# `cat … | head` does.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader of our output went away: stop quietly, as Unix tools do. Point stdout
        # at /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "esper":
            raise  # our own module missing is a bug, not an install choice
        print(f"esper: the command needs the server extra (missing module {exc.name!r}): "
              "pip install 'esper[server]'", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    use_stack_tls(args.command)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"esper {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
