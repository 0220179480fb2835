"""Typed service configuration from defaults, an optional TOML file, `ESPER_*` environment
variables and command-line flags (later sources win).

Each service declares a frozen dataclass deriving from `ServerConfig`. Every field is
settable as `--field-name`, `ESPER_FIELD_NAME` and `field_name` in TOML. The TOML file has one
table per service (`[urza]`, `[tamiyo]`…) plus `[defaults]` for keys shared by several
services; a key no service knows, or a table no service owns, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "ESPER_"
DEFAULTS_TABLE = "defaults"

C = TypeVar("C", bound="ServerConfig")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names it."""


@dataclass(frozen=True)
class ServerConfig:
    """Settings every server has."""

    # Address to bind; loopback by default so nothing is exposed by accident.
    host: str = "127.0.0.1"
    # gRPC port; 0 picks a free one (printed at start).
    port: int = 0
    # Prometheus /metrics HTTP port; 0 picks a free one, -1 disables it.
    metrics_port: int = 0
    # "text" for humans, "json" for production log shippers.
    log_format: str = "text"
    # Log level name.
    log_level: str = "INFO"
    # Where spans go: "none", "console" or "otlp".
    otel_exporter: str = "none"
    # OTLP/gRPC collector endpoint, used when otel_exporter = "otlp".
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # Seconds in-flight RPCs get to finish on SIGTERM/SIGINT.
    shutdown_grace_seconds: float = 5.0
    # Seconds between the server's keepalive pings on a connection, and how long it waits
    # for the answer before closing the connection (a vanished client's streams are freed).
    keepalive_s: float = 120.0
    keepalive_timeout_s: float = 20.0
    # A connection with no RPC for this long is closed.
    max_connection_idle_s: float = 900.0
    # A connection older than this is asked to go away (clients reconnect; a Tamiyo Session
    # resumes); its streams get max_connection_age_grace_s more to finish, then are cut.
    max_connection_age_s: float = 3600.0
    max_connection_age_grace_s: float = 300.0
    # Directory for the service's own files (policy artifacts, scratch).
    state_dir: str = ".esper"
    # Transport security (esper.runtime.tls); the same ESPER_TLS* settings configure this
    # process's outbound channels (esper.rpc.channels). Serve TLS:
    tls: bool = False
    # This server's certificate chain and key (PEM); also its client certificate to peers.
    tls_cert: str = ""
    tls_key: str = ""
    # The CA (PEM) that signs client certificates.
    tls_ca: str = ""
    # Require a client certificate signed by tls_ca (mutual TLS); false: TLS only.
    tls_client_auth: bool = True
    # Identity and authorisation (esper.runtime.auth). Off: every caller may call every
    # RPC, and only a loopback host is allowed. On: callers must prove an identity (a
    # bearer token or a client certificate) and hold a grant for what they call.
    auth: bool = False
    # Bearer tokens: one `IDENTITY SHA256-HEX-OF-TOKEN` per line.
    auth_tokens_file: str = ""
    # Identities granted each access class ("*": any authenticated identity).
    grant_read: tuple[str, ...] = ("*",)
    grant_session: tuple[str, ...] = ("*",)
    grant_submit: tuple[str, ...] = ("*",)
    grant_report: tuple[str, ...] = ("tamiyo", "admin")
    grant_register: tuple[str, ...] = ("tezzeret", "admin")
    grant_admin: tuple[str, ...] = ("admin",)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field. Subclasses extend this."""
        if not self.host:
            raise ConfigError("host: must not be empty")
        if self.host != "localhost":
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ConfigError(f"host: {self.host!r} is not an IP address") from None
        check_port("port", self.port)
        if self.metrics_port != -1:
            check_port("metrics_port", self.metrics_port)
        check_choice("log_format", self.log_format, ("text", "json"))
        check_choice("log_level", self.log_level.upper(), ("DEBUG", "INFO", "WARNING", "ERROR"))
        check_choice("otel_exporter", self.otel_exporter, ("none", "console", "otlp"))
        if self.otel_exporter == "otlp":
            check_url("otlp_endpoint", self.otlp_endpoint, ("http", "https"))
        if not self.state_dir:  # "" would put the service's files in whatever cwd it has
            raise ConfigError("state_dir: must not be empty")
        if not 0 <= self.shutdown_grace_seconds <= 300:
            raise ConfigError("shutdown_grace_seconds: must be within [0, 300]")
        for name, low, high in (("keepalive_s", 1, 86_400), ("keepalive_timeout_s", 1, 600),
                                ("max_connection_idle_s", 1, 7 * 86_400),
                                ("max_connection_age_s", 1, 30 * 86_400),
                                ("max_connection_age_grace_s", 0, 86_400)):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"{name}: must be within [{low}, {high}]")
        self._validate_security()

    def _validate_security(self) -> None:
        from esper.runtime.auth import check_grants  # auth and tls import this module
        from esper.runtime.tls import check_tls

        check_tls(self)
        check_grants(self)
        if not self.auth and not is_loopback_host(self.host):
            raise ConfigError(f"auth: off is only allowed on a loopback host, not {self.host!r} "
                              "(set auth=true, with tokens or client certificates)")


def is_loopback_host(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def check_port(name: str, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name}: {value} is not a TCP port (0-65535)")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


def check_url(name: str, value: str, schemes: tuple[str, ...]) -> None:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in schemes or not rest:
        raise ConfigError(f"{name}: {value!r} must be a URL starting with {' or '.join(schemes)}://")


def check_address(name: str, value: str) -> None:
    """host:port, as gRPC targets and Kafka bootstrap servers are written."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{name}: {value!r} must be HOST:PORT")
    check_port(name, int(port))


def field_names(cls: type[ServerConfig]) -> set[str]:
    return {f.name for f in fields(cls)}


def _field_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    hint = hints[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    if typing.get_origin(hint) in (tuple, list):
        return tuple
    return hint


def coerce(cls: type, name: str, raw: Any, source: str) -> Any:
    """Convert `raw` (a string from env/flags, or a TOML value) to the field's type."""
    want = _field_type(cls, name)
    try:
        if want is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if want is int:
            if isinstance(raw, bool) or isinstance(raw, float):
                raise ValueError("expected an integer")
            return int(raw)
        if want is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if want is tuple:
            items = raw if isinstance(raw, list) else [s for s in str(raw).split(",") if s]
            return tuple(str(s).strip() for s in items)
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ValueError("expected a string")
        return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} (from {source}): {raw!r} is invalid: {exc}") from None


def from_env(cls: type, name: str, raw: str) -> Any:
    """An `ESPER_*` value. An empty one is set, never "unset" (which silently kept the
    default: ESPER_URZA_ADDRESS="" left Tamiyo calling Urza at 127.0.0.1:50051): text is ""
    (an address that may be empty turns its calls off; one that may not fails validation,
    naming it), a list is (), a switch is off (as the clients' ESPER_TLS reads), and a
    number is an error. To get the default, unset the variable."""
    key = ENV_PREFIX + name.upper()
    if raw.strip():
        return coerce(cls, name, raw, f"env {key}")
    want = _field_type(cls, name)
    if want is bool:
        return False
    if want in (int, float):
        raise ConfigError(f"{name} (from env {key}): empty; set a number, or unset {key} for the default")
    return () if want is tuple else ""


def read_toml(path: str | Path, service: str, known_tables: Mapping[str, set[str]]) -> dict:
    """The keys of `[defaults]` and `[service]` that apply to `service`.

    `known_tables` maps every service name to its field names, so a key in any table is
    checked against the service that owns the table and `[defaults]` against all of them.
    """
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    every_key = set().union(*known_tables.values())
    for table, body in doc.items():
        if table != DEFAULTS_TABLE and table not in known_tables:
            raise ConfigError(
                f"config file {path}: unknown key or table [{table}] "
                f"(tables: {DEFAULTS_TABLE}, {', '.join(sorted(known_tables))})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"config file {path}: [{table}] must be a table")
        allowed = every_key if table == DEFAULTS_TABLE else known_tables[table]
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ConfigError(f"config file {path}: unknown key {table}.{unknown[0]}")
    own = known_tables[service]
    merged = {k: v for k, v in doc.get(DEFAULTS_TABLE, {}).items() if k in own}
    merged.update(doc.get(service, {}))
    return merged


def load_config(
    cls: type[C],
    service: str,
    *,
    toml_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    known_tables: Mapping[str, set[str]] | None = None,
) -> C:
    """Build and validate `cls` from defaults < TOML < env < overrides (flags)."""
    env = os.environ if env is None else env
    names = field_names(cls)
    tables = dict(known_tables or {})
    tables.setdefault(service, names)
    values: dict[str, Any] = {}
    path = toml_path or env.get(f"{ENV_PREFIX}CONFIG")
    if path:
        for key, raw in read_toml(path, service, tables).items():
            values[key] = coerce(cls, key, raw, f"config file {path}")
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = from_env(cls, name, raw)
    for name, raw in (overrides or {}).items():
        if name not in names:
            raise ConfigError(f"unknown setting {name!r} for {service}")
        if raw is not None:
            values[name] = coerce(cls, name, raw, f"flag --{name.replace('_', '-')}")
    config = cls(**values)
    config.validate()
    return config


def add_config_flags(parser: Any, cls: type[ServerConfig]) -> None:
    """Add one `--field-name` flag per config field (all optional, default None)."""
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"(env {ENV_PREFIX}{f.name.upper()}; default {default!r})",
        )


def overrides_from_args(args: Any, cls: type[ServerConfig]) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
