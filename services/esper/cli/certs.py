"""`esper certs`: a development CA and certificates for TLS and mutual TLS
(esper.runtime.certs). Servers (`--server`, default the four services) get certificates for
localhost, 127.0.0.1 and ::1 usable to serve and as clients; clients (`--client`, default
admin and tolaria) client-only ones. The subject CN of each is the identity the servers'
grants name. Keys are written 0600; an existing CA in the directory is reused."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esper.cli.addresses import DEFAULT_STATE_DIR
from esper.runtime.certs import (
    CA_CERT,
    CLIENT_IDENTITIES,
    SERVER_IDENTITIES,
    CertError,
    make_dev_pki,
)

DEFAULT_DIR = f"{DEFAULT_STATE_DIR}/tls"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("certs", help="make a development CA and TLS certificates",
                                   description=__doc__)
    parser.add_argument("--dir", default=DEFAULT_DIR, metavar="DIR",
                        help=f"where to write them (default {DEFAULT_DIR}, where `esper up --tls` looks)")
    parser.add_argument("--server", action="append", metavar="NAME",
                        help=f"a server identity (repeatable; default: {', '.join(SERVER_IDENTITIES)})")
    parser.add_argument("--client", action="append", metavar="NAME",
                        help=f"a client identity (repeatable; default: {', '.join(CLIENT_IDENTITIES)})")
    parser.add_argument("--name", action="append", default=[], metavar="DNS",
                        help="an extra DNS name in every server certificate (e.g. a compose service host)")
    parser.add_argument("--force", action="store_true", help="make a new CA and reissue everything")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir).expanduser().resolve()
    try:
        issued = make_dev_pki(directory, args.server or SERVER_IDENTITIES, args.client or CLIENT_IDENTITIES,
                              force=args.force, extra_names=args.name)
    except CertError as exc:
        print(f"esper certs: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"esper certs: error: {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"CA: {directory / CA_CERT}")
    for identity, paths in issued.items():
        print(f"{identity}: {paths.cert} (key {paths.key})")
    admin = issued.get("admin") or next(iter(issued.values()))
    print(f"\nas the {admin.identity!r} client:\n  export ESPER_TLS=true ESPER_TLS_CA={directory / CA_CERT} "
          f"ESPER_TLS_CERT={admin.cert} ESPER_TLS_KEY={admin.key}")
    return 0
