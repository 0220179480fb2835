"""The local stack with mutual TLS (`esper up --tls`): a development PKI under
`<state>/tls` (esper.runtime.certs), each server serving its own certificate and presenting
it to its peers, auth on (identities from certificate CNs, the default grants of
esper.runtime.auth), and the `admin` certificate for the stack's own health probes and the
CLI (`tolaria` for `esper train`).

Everything is passed as the one ESPER_TLS* vocabulary the servers' config and every
client channel read.
"""

from __future__ import annotations

from pathlib import Path

from esper.rpc.channels import ChannelSecurity
from esper.runtime.certs import CA_CERT, SERVER_IDENTITIES, cert_paths, make_dev_pki

TLS_DIR = "tls"
# Who the stack's probes and the CLI are (granted everything by the default grants).
ADMIN = "admin"
# Settings a plaintext stack's servers get, so a shell's own ESPER_TLS* never leaks into them.
PLAINTEXT = {"ESPER_TLS": "", "ESPER_TLS_CA": "", "ESPER_TLS_CERT": "", "ESPER_TLS_KEY": "",
             "ESPER_TLS_SERVER_NAME": "", "ESPER_AUTH": "", "ESPER_TOKEN": "", "ESPER_TOKEN_FILE": ""}


def tls_dir(state_dir: Path) -> Path:
    return Path(state_dir) / TLS_DIR


def ensure_pki(state_dir: Path) -> Path:
    """The stack's CA and certificates (made on first use, kept across down/up)."""
    directory = tls_dir(state_dir)
    make_dev_pki(directory)
    return directory


def client_env(state_dir: Path, identity: str = ADMIN) -> dict[str, str]:
    """The ESPER_TLS* settings of a client (or a server: its outbound side) of the stack."""
    paths = cert_paths(tls_dir(state_dir), identity)
    return {"ESPER_TLS": "true", "ESPER_TLS_CA": str(tls_dir(state_dir) / CA_CERT),
            "ESPER_TLS_CERT": str(paths.cert), "ESPER_TLS_KEY": str(paths.key)}


def server_env(state_dir: Path, name: str, tls: bool) -> dict[str, str]:
    """What server `name` adds to its environment: its certificate, mutual TLS and auth."""
    if not tls:
        return dict(PLAINTEXT)
    if name not in SERVER_IDENTITIES:
        raise ValueError(f"{name!r} is not a server of the stack")
    return {**PLAINTEXT, **client_env(state_dir, name), "ESPER_TLS_CLIENT_AUTH": "true", "ESPER_AUTH": "true"}


def probe_security(state_dir: Path, tls: bool) -> ChannelSecurity:
    """How the stack's health probes connect (never from the caller's environment)."""
    if not tls:
        return ChannelSecurity()
    env = client_env(state_dir)
    return ChannelSecurity(tls=True, ca_file=env["ESPER_TLS_CA"], cert_file=env["ESPER_TLS_CERT"],
                           key_file=env["ESPER_TLS_KEY"])
