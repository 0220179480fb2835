"""`esper serve NAME`: run one Esper server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import sys

from esper.runtime.config import ConfigError, add_config_flags, load_config, overrides_from_args
from esper.runtime.registry import SERVICE_NAMES, known_config_tables, load_spec
from esper.runtime.server import StartupError, serve_forever


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run one server (urza, tezzeret, tamiyo, nissa)")
    names = parser.add_subparsers(dest="service", metavar="SERVICE")
    names.required = True
    for name in SERVICE_NAMES:
        spec = load_spec(name)
        sub = names.add_parser(name, help=spec.description or name)
        sub.add_argument("--config", dest="config_file", default=None, help="TOML config file")
        add_config_flags(sub, spec.config_cls)
        sub.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.service)
    try:
        config = load_config(
            spec.config_cls, spec.name, toml_path=args.config_file,
            overrides=overrides_from_args(args, spec.config_cls),
            known_tables=known_config_tables(),
        )
        asyncio.run(serve_forever(spec, config))
    except (ConfigError, StartupError) as exc:
        print(f"esper serve {spec.name}: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
