"""The server side of transport security, in the client's vocabulary (esper.rpc.channels):
the same settings name the same files in a server process, where they serve both ways.

    ESPER_TLS=true            serve TLS (and: outbound channels use TLS)
    ESPER_TLS_CERT, _KEY      this process's certificate: served to clients, and presented
                              as the client certificate on outbound channels
    ESPER_TLS_CA              the CA that signs client certificates (and peers' servers)
    ESPER_TLS_CLIENT_AUTH     require a client certificate signed by ESPER_TLS_CA (mutual
                              TLS, the default when TLS is on); false: TLS only, callers
                              identify with bearer tokens

gRPC's Python server can require a verified client certificate or not request one; there
is no "optional" mode, hence the one switch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import grpc

from esper.runtime.config import ConfigError


class TlsSettings(Protocol):
    tls: bool
    tls_cert: str
    tls_key: str
    tls_ca: str
    tls_client_auth: bool


def check_tls(config: TlsSettings) -> None:
    """Refuse settings that cannot work, naming the field; read nothing yet."""
    if not config.tls:
        if config.tls_cert or config.tls_key:
            raise ConfigError("tls_cert: set, but tls is off (set tls=true, or drop tls_cert/tls_key)")
        return
    for name in ("tls_cert", "tls_key"):
        if not getattr(config, name):
            raise ConfigError(f"{name}: required when tls is on")
    if config.tls_client_auth and not config.tls_ca:
        raise ConfigError("tls_ca: required when tls_client_auth is on (the CA that signs "
                          "client certificates); or set tls_client_auth=false")


def _read(path: str, name: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{name}: {path} is not a PEM file")
    return data


def server_credentials(config: TlsSettings) -> grpc.ServerCredentials | None:
    """The credentials to serve with, or None for plaintext (tls off)."""
    check_tls(config)
    if not config.tls:
        return None
    pair = (_read(config.tls_key, "tls_key"), _read(config.tls_cert, "tls_cert"))
    roots = _read(config.tls_ca, "tls_ca") if config.tls_client_auth else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=bool(config.tls_client_auth))
