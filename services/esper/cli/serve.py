"""`esper serve NAME [settings]`: run one Esper server in the foreground.

The service's implementation (and its config class, which defines the flags) is imported
only when that service is served, so other `esper` commands start without importing every
server and torch."""

from __future__ import annotations

import argparse
import asyncio
import sys

from esper.runtime.config import ConfigError, add_config_flags, load_config, overrides_from_args
from esper.runtime.processes import serve_processes, serves_in_processes
from esper.runtime.registry import SERVICE_NAMES, known_config_tables, load_spec
from esper.runtime.server import StartupError, serve_forever


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run one server (urza, tezzeret, tamiyo, nissa)", add_help=False,
        description="Run one server. `esper serve NAME --help` lists NAME's settings.",
    )
    parser.add_argument("service", nargs="?", metavar="SERVICE", help=", ".join(SERVICE_NAMES))
    parser.add_argument("settings", nargs=argparse.REMAINDER, help="--config FILE and --setting VALUE flags")
    parser.set_defaults(func=run, serve_parser=parser)


def service_parser(name: str) -> argparse.ArgumentParser:
    spec = load_spec(name)
    parser = argparse.ArgumentParser(
        prog=f"esper serve {name}", description=spec.description or name,
        epilog="Each setting is also an ESPER_<SETTING> environment variable and a key of the "
        f"[{name}] (or [defaults]) table of the TOML file.",
    )
    parser.add_argument("--config", dest="config_file", default=None, help="TOML config file")
    add_config_flags(parser, spec.config_cls)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.service in (None, "-h", "--help"):
        args.serve_parser.print_help()
        return 0 if args.service else 2
    if args.service not in SERVICE_NAMES:
        print(f"esper serve: error: unknown service {args.service!r} "
              f"(choose from {', '.join(SERVICE_NAMES)})", file=sys.stderr)
        return 2
    spec = load_spec(args.service)
    settings = service_parser(spec.name).parse_args(args.settings)
    try:
        config = load_config(
            spec.config_cls, spec.name, toml_path=settings.config_file,
            overrides=overrides_from_args(settings, spec.config_cls),
            known_tables=known_config_tables(),
        )
        if serves_in_processes(config):
            return serve_processes(spec, config)
        asyncio.run(serve_forever(spec, config))
    except (ConfigError, StartupError) as exc:
        print(f"esper serve {spec.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
