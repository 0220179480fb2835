"""Who is calling, and may they: checked before every RPC by the one server interceptor
(esper.runtime.interceptor).

Identity. A caller is named by, in this order:
  1. a bearer token (`authorization: Bearer …`, what esper.rpc.channels sends from
     ESPER_TOKEN/ESPER_TOKEN_FILE), looked up in `auth_tokens_file`; a token that is not
     there is refused (UNAUTHENTICATED), never downgraded to anonymous;
  2. the subject CN of a verified client certificate (mutual TLS, esper.runtime.tls);
  3. nobody: the identity `anonymous`.

Authorisation. Every RPC belongs to one access class (`RPC_ACCESS`); each class is granted
to named identities by config (`grant_read`, `grant_session`, …; `*` is any authenticated
identity). Health and reflection are open to all. An RPC the table does not know is an
admin call (deny by default).

Policy. With `auth` off (the default, for local development) every caller may call every
RPC, and the server refuses to listen anywhere but loopback (esper.runtime.config). With
`auth` on, `anonymous` gets UNAUTHENTICATED on everything but the open RPCs, and an
identity calling an RPC its grants do not cover gets PERMISSION_DENIED.

Servicers read the caller with `caller()` (Tamiyo binds a run to the identity that opened
it; quotas count per identity).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from esper.rpc.metadata import AUTHORIZATION
from esper.runtime.config import ConfigError

log = logging.getLogger("esper.runtime.auth")

ANONYMOUS = "anonymous"
ANY_IDENTITY = "*"
BEARER = "bearer "
IDENTITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# The access classes, each granted by the config field `grant_<class>`.
READ, SESSION, SUBMIT, REPORT, REGISTER, ADMIN = (
    "read", "session", "submit", "report", "register", "admin")
ACCESS_CLASSES = (READ, SESSION, SUBMIT, REPORT, REGISTER, ADMIN)

# Services every caller may use: liveness probes and discovery carry no data.
OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")

_V1 = "esper.leyline.v1"
RPC_ACCESS: dict[str, str] = {
    **{f"/{_V1}.UrzaService/{m}": READ for m in (
        "GetBlueprint", "ListBlueprints", "GetKernel", "ListKernels", "SearchKernels",
        "DownloadKernel", "WatchCatalog")},
    f"/{_V1}.UrzaService/CreateBlueprint": SUBMIT,
    # Field reports move the search ranking: only the controller (and admins) report.
    f"/{_V1}.UrzaService/RecordFieldReport": REPORT,
    # Kernels and their stats are trusted by every training run: only the forge registers.
    **{f"/{_V1}.UrzaService/{m}": REGISTER for m in (
        "RegisterKernel", "UploadKernel", "UpdateBlueprintState")},
    f"/{_V1}.UrzaService/RetireBlueprint": ADMIN,
    **{f"/{_V1}.TezzeretService/{m}": READ for m in ("GetJob", "ListJobs", "WatchJob")},
    f"/{_V1}.TezzeretService/SubmitCompile": SUBMIT,
    f"/{_V1}.TezzeretService/CancelJob": ADMIN,
    **{f"/{_V1}.TamiyoService/{m}": SESSION for m in ("Session", "Decide")},
    f"/{_V1}.TamiyoService/ListPolicies": READ,
    f"/{_V1}.TamiyoService/ReloadPolicy": ADMIN,
    **{f"/{_V1}.NissaService/{m}": READ for m in (
        "ListRuns", "GetRunSummary", "StreamEvents", "ListEvents", "ListAlerts")},
    f"/{_V1}.NissaService/AcknowledgeAlert": ADMIN,
}

# Grants when auth is on and the config says nothing: reading, training and submitting are
# for every authenticated identity; what changes shared state others trust is for the
# service that owns that job and for `admin`.
DEFAULT_GRANTS: dict[str, tuple[str, ...]] = {
    READ: (ANY_IDENTITY,), SESSION: (ANY_IDENTITY,), SUBMIT: (ANY_IDENTITY,),
    REPORT: ("tamiyo", "admin"), REGISTER: ("tezzeret", "admin"), ADMIN: ("admin",),
}

_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("esper_caller", default=ANONYMOUS)


def caller() -> str:
    """The identity of the RPC being served (`anonymous` when nobody proved one)."""
    return _CALLER.get()


def token_digest(token: str) -> str:
    """What `auth_tokens_file` stores for a token: its SHA-256, hex (the file holds no secret)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def access_of(method: str) -> str | None:
    """The access class of a full method name; None for an open service."""
    service = method.lstrip("/").split("/", 1)[0]
    if service in OPEN_SERVICES:
        return None
    return RPC_ACCESS.get(method, ADMIN)


class AuthSettings(Protocol):
    auth: bool
    auth_tokens_file: str
    grant_read: tuple[str, ...]
    grant_session: tuple[str, ...]
    grant_submit: tuple[str, ...]
    grant_report: tuple[str, ...]
    grant_register: tuple[str, ...]
    grant_admin: tuple[str, ...]


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_grants(config: AuthSettings) -> None:
    for access in ACCESS_CLASSES:
        for name in getattr(config, f"grant_{access}"):
            if name != ANY_IDENTITY and not IDENTITY_NAME.match(name):
                raise ConfigError(f"grant_{access}: {name!r} is not an identity name")


def load_tokens(path: str) -> dict[str, str]:
    """`auth_tokens_file`: one `IDENTITY SHA256-HEX-OF-TOKEN` per line, `#` comments.
    Returns digest -> identity."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"auth_tokens_file: cannot read {path}: {exc.strerror}") from None
    table: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not IDENTITY_NAME.match(parts[0]) or not SHA256_HEX.match(parts[1]):
            raise ConfigError(f"auth_tokens_file: {path}:{number}: expected 'IDENTITY SHA256HEX' "
                              "(the token's digest: printf %s TOKEN | sha256sum)")
        if parts[1] in table:
            raise ConfigError(f"auth_tokens_file: {path}:{number}: a token digest is listed twice")
        table[parts[1]] = parts[0]
    return table


@dataclass(frozen=True)
class AuthPolicy:
    """Identities and grants of one server."""

    required: bool
    tokens: Mapping[str, str]  # token digest -> identity
    grants: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_config(cls, config: AuthSettings) -> AuthPolicy:
        check_grants(config)
        tokens = load_tokens(config.auth_tokens_file) if config.auth_tokens_file else {}
        grants = {a: tuple(getattr(config, f"grant_{a}")) for a in ACCESS_CLASSES}
        return cls(bool(config.auth), tokens, grants)

    def identify(self, metadata: Iterable[tuple[str, Any]], auth_context: Mapping[str, list[bytes]]) -> str:
        """The caller's identity; AuthError(UNAUTHENTICATED) for a token that is not known."""
        token = _bearer(metadata)
        if token is not None:
            digest = token_digest(token)
            identity = next((who for known, who in self.tokens.items()
                             if hmac.compare_digest(known, digest)), None)
            if identity is None:
                raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                                "authorization: the bearer token is not valid for this server")
            return identity
        names = auth_context.get("x509_common_name") or []
        if names:
            return names[0].decode("utf-8", errors="replace")
        return ANONYMOUS

    def authorize(self, identity: str, method: str) -> None:
        """Raise AuthError unless `identity` may call `method`."""
        access = access_of(method)
        if access is None or not self.required:
            return
        if identity == ANONYMOUS:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED,
                            "authorization: this server needs a bearer token or a client certificate")
        granted = self.grants[access]
        if ANY_IDENTITY not in granted and identity not in granted:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                            f"{identity!r} may not call {method.rsplit('/', 1)[-1]} "
                            f"({access} calls are granted to: {', '.join(granted) or 'nobody'})")


def _bearer(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The bearer token of the call; a malformed authorization header counts as a bad token."""
    for key, value in metadata or ():
        if key != AUTHORIZATION:
            continue
        text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        if not text.lower().startswith(BEARER):
            return "\0malformed"  # matches no digest: UNAUTHENTICATED
        return text[len(BEARER):].strip()
    return None


def admit(policy: AuthPolicy, method: str, context: grpc.aio.ServicerContext) -> AuthError | None:
    """Identify and authorise the call being served (esper.runtime.interceptor runs this
    before every handler): set the caller that `caller()` returns, or return the error to
    answer with."""
    try:
        identity = policy.identify(context.invocation_metadata() or (), context.auth_context() or {})
        policy.authorize(identity, method)
    except AuthError as exc:
        log.info("call refused", extra={"rpc": method, "code": exc.code.name, "reason": str(exc)})
        return exc
    _CALLER.set(identity)
    return None
