"""The one way an Esper process opens a gRPC channel to an Esper service.

    channel = open_channel("urza.internal:50051")             # grpc.aio, settings from env
    channel = open_channel(address, aio=False)                  # blocking, for the CLI
    channel = open_channel(address, security=ChannelSecurity(tls=True, ca_file="ca.pem",
                                                              token="…"))

What every channel gets: TLS (server verified against `ca_file` or the system roots) and
mTLS (a client certificate) when asked, a bearer token on every call, keepalive pings,
retries of UNAVAILABLE through gRPC's service config (the transport retries; callers keep
their own deadlines), the message-size limit the servers use, and trace-context
interceptors. Security comes from the caller or from the environment
(`ChannelSecurity.from_env`: ESPER_TLS, ESPER_TLS_CA, ESPER_TLS_CERT, ESPER_TLS_KEY,
ESPER_TLS_SERVER_NAME, ESPER_TOKEN or ESPER_TOKEN_FILE), so a deployment turns TLS on for
every client at once.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from esper.rpc.metadata import TokenInterceptor, aio_token_interceptors
from esper.rpc.tracing import client_interceptors

# The message limit of every Esper channel and server (esper.runtime.server uses this
# one): a kernel travels in chunks, every other message is far smaller.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Keepalive ping period: gRPC servers refuse pings more frequent than every 5 minutes by
# default (GOAWAY "too_many_pings"), so this is the shortest period safe against any server.
KEEPALIVE_S = 300.0
# How long to wait for a keepalive ping's answer before calling the connection dead.
KEEPALIVE_TIMEOUT_S = 20.0
# Attempts of a call that failed UNAVAILABLE before it reached a server (the first included).
RETRY_ATTEMPTS = 3
RETRY_INITIAL_BACKOFF_S = 0.2
RETRY_MAX_BACKOFF_S = 2.0
TRUE_WORDS = ("1", "true", "yes", "on")


class ChannelConfigError(ValueError):
    """Channel settings that cannot work (named in the message)."""


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client checks the server and proves who it is."""

    tls: bool = False
    # PEM certificates that sign the server's certificate (None: the system's roots).
    ca_file: str | None = None
    # A client certificate and its key (mutual TLS).
    cert_file: str | None = None
    key_file: str | None = None
    # The name to check in the server's certificate when it differs from the address's host.
    server_name: str | None = None
    # A bearer token sent as `authorization: Bearer <token>` with every call.
    token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChannelSecurity:
        env = os.environ if environ is None else environ
        token = env.get("ESPER_TOKEN") or None
        token_file = env.get("ESPER_TOKEN_FILE")
        if token_file and not token:
            token = _read_text(token_file, "ESPER_TOKEN_FILE").strip() or None
        return cls(
            tls=env.get("ESPER_TLS", "").strip().lower() in TRUE_WORDS,
            ca_file=env.get("ESPER_TLS_CA") or None, cert_file=env.get("ESPER_TLS_CERT") or None,
            key_file=env.get("ESPER_TLS_KEY") or None,
            server_name=env.get("ESPER_TLS_SERVER_NAME") or None, token=token)

    def check(self, address: str) -> None:
        """Refuse settings that cannot work, or would send a secret in the clear."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ChannelConfigError("a client certificate needs both cert_file and key_file")
        if not self.tls and (self.ca_file or self.cert_file or self.server_name):
            raise ChannelConfigError("ca_file, cert_file and server_name need tls=True")
        if self.token and not self.tls and not is_loopback(address):
            raise ChannelConfigError(
                f"a bearer token would travel in the clear to {address}: use tls=True "
                "(plaintext tokens are only sent to loopback addresses)")
        if self.token and any(c in self.token for c in "\r\n\0"):
            raise ChannelConfigError("token holds a line break or NUL")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_bytes(self.ca_file, "ca_file") if self.ca_file else None,
            private_key=_read_bytes(self.key_file, "key_file") if self.key_file else None,
            certificate_chain=_read_bytes(self.cert_file, "cert_file") if self.cert_file else None)


def open_channel(address: str, *, security: ChannelSecurity | None = None, aio: bool = True,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, keepalive_s: float = KEEPALIVE_S,
                 retry_attempts: int = RETRY_ATTEMPTS, own_connection: bool = False):
    """A channel to the Esper service at `address`: HOST:PORT, or several replicas of it —
    an address list (`127.0.0.1:7001,127.0.0.1:7002`, or gRPC's `ipv4:`/`ipv6:` form) or a
    DNS name with several addresses (`dns:///tamiyo.internal:50051`), called round robin
    (a replica that is down is skipped). `grpc.aio.Channel` by default, a blocking
    `grpc.Channel` with `aio=False`. gRPC lets the channels of one process to one address
    share a connection; `own_connection` gives this one its own, as a channel in another
    process has (a server spread over processes by connection sees them apart)."""
    target, hosts = parse_target(address)
    security = security if security is not None else ChannelSecurity.from_env()
    for host in hosts:
        security.check(host)
    options = channel_options(security, max_message_bytes, keepalive_s, retry_attempts,
                              balanced=target != address or target.startswith(TARGET_SCHEMES))
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    address = target
    if aio:
        interceptors = [*client_interceptors(), *aio_token_interceptors(security.token)]
        if security.tls:
            return grpc.aio.secure_channel(address, security.credentials(), options=options,
                                           interceptors=interceptors)
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    channel = (grpc.secure_channel(address, security.credentials(), options=options)
               if security.tls else grpc.insecure_channel(address, options=options))
    if security.token:
        channel = grpc.intercept_channel(channel, TokenInterceptor(security.token))
    return channel


def channel_options(security: ChannelSecurity, max_message_bytes: int, keepalive_s: float,
                    retry_attempts: int, balanced: bool = False) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
        ("grpc.enable_retries", 1 if retry_attempts > 1 else 0),
        ("grpc.service_config", service_config(retry_attempts, balanced)),
    ]
    if security.server_name:
        options.append(("grpc.ssl_target_name_override", security.server_name))
    return options


def service_config(retry_attempts: int, balanced: bool = False) -> str:
    """gRPC's service config: UNAVAILABLE (no server reached) retried with backoff, for
    every method of every service (gRPC never retries once a response has started); with
    `balanced`, calls spread round robin over every address the target names."""
    config: dict[str, object] = {"methodConfig": [{"name": [{}]}]}
    if retry_attempts > 1:
        config["methodConfig"] = [{
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": min(retry_attempts, 5),  # gRPC caps attempts at 5
                "initialBackoff": f"{RETRY_INITIAL_BACKOFF_S}s",
                "maxBackoff": f"{RETRY_MAX_BACKOFF_S}s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


# gRPC target schemes an address may carry: several addresses (`ipv4:`, `ipv6:`, comma
# separated) or a DNS name resolved to all its addresses (`dns:`).
TARGET_SCHEMES = ("ipv4:", "ipv6:", "dns:")


def parse_target(address: str) -> tuple[str, list[str]]:
    """The gRPC target of `address` and the HOST:PORT of each server it names (for the
    security checks). A plain list `a:1,b:2` of IP addresses becomes gRPC's `ipv4:`/`ipv6:`
    form; a list of names is refused (gRPC resolves one name per target: use `dns:///NAME:PORT`
    with several DNS records instead)."""
    if not address or ":" not in address:
        raise ChannelConfigError(f"address must be HOST:PORT (or a list of them), got {address!r}")
    scheme = next((s for s in TARGET_SCHEMES if address.startswith(s)), "")
    body = address[len(scheme):]
    if scheme == "dns:":
        hostport = body[2:].split("/", 1)[1] if body.startswith("//") else body  # dns://AUTHORITY/NAME
        _check_hostport(address, hostport)
        return address, [hostport]
    hosts = [h.strip() for h in body.split(",")]
    for host in hosts:
        _check_hostport(address, host)
    if scheme or len(hosts) == 1:
        return (address if scheme else hosts[0]), hosts
    families = {_ip_family(h) for h in hosts}
    if len(families) != 1 or None in families:
        raise ChannelConfigError(
            f"{address!r}: an address list must be all IPv4 or all IPv6 addresses "
            "(for names, use dns:///NAME:PORT with one DNS record per replica)")
    return f"{families.pop()}:{','.join(hosts)}", hosts


def _check_hostport(address: str, hostport: str) -> None:
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ChannelConfigError(f"{address!r}: {hostport!r} is not HOST:PORT")


def _ip_family(hostport: str) -> str | None:
    try:
        return f"ipv{ipaddress.ip_address(hostport.rsplit(':', 1)[0].strip('[]')).version}"
    except ValueError:
        return None


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ChannelConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _read_text(path: str, what: str) -> str:
    return _read_bytes(path, what).decode("utf-8", errors="replace")
