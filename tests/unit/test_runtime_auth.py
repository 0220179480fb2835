"""Identity and per-RPC authorisation (esper.runtime.auth) as pure logic: tokens file,
identification by token or certificate CN, grants; the quota bucket; the security settings
of every server's config. The same rules against real TLS servers: tests/integration/
test_runtime_security.py."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from esper.runtime.auth import (
    ADMIN,
    ANONYMOUS,
    READ,
    REGISTER,
    REPORT,
    SESSION,
    AuthError,
    AuthPolicy,
    access_of,
    load_tokens,
    token_digest,
)
from esper.runtime.config import ConfigError, ServerConfig
from esper.runtime.errors import ResourceExhausted
from esper.runtime.quota import RateQuota

V1 = "/esper.leyline.v1"


def policy(tmp_path, required=True, **grants) -> AuthPolicy:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who  sha256(token)\nops {token_digest('ops-secret')}\n"
                      f"admin {token_digest('admin-secret')}  # the operator\n")
    config = dataclasses.replace(ServerConfig(), auth=required, auth_tokens_file=str(tokens), **grants)
    return AuthPolicy.from_config(config)


def test_every_destructive_rpc_is_not_a_read() -> None:
    assert access_of(f"{V1}.UrzaService/RetireBlueprint") == ADMIN
    assert access_of(f"{V1}.UrzaService/RecordFieldReport") == REPORT
    assert access_of(f"{V1}.UrzaService/RegisterKernel") == REGISTER
    assert access_of(f"{V1}.UrzaService/UploadKernel") == REGISTER
    assert access_of(f"{V1}.TezzeretService/CancelJob") == ADMIN
    assert access_of(f"{V1}.TamiyoService/ReloadPolicy") == ADMIN
    assert access_of(f"{V1}.TamiyoService/Session") == SESSION
    assert access_of(f"{V1}.UrzaService/ListBlueprints") == READ
    # Unknown RPCs are admin calls (deny by default); health and reflection are open.
    assert access_of(f"{V1}.UrzaService/SomethingNew") == ADMIN
    assert access_of("/grpc.health.v1.Health/Check") is None
    assert access_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None


def test_identity_from_token_then_certificate_then_anonymous(tmp_path) -> None:
    p = policy(tmp_path)
    cert = {"x509_common_name": [b"tamiyo"]}
    assert p.identify([("authorization", "Bearer ops-secret")], {}) == "ops"
    assert p.identify([("authorization", "Bearer admin-secret")], cert) == "admin"  # token wins
    assert p.identify([], cert) == "tamiyo"
    assert p.identify([], {}) == ANONYMOUS
    for bad in ("Bearer wrong", "Basic b3BzOm9wcw==", "Bearer ", "ops-secret"):
        with pytest.raises(AuthError) as err:
            p.identify([("authorization", bad)], cert)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_grants_decide_per_rpc(tmp_path) -> None:
    p = policy(tmp_path)
    p.authorize("ops", f"{V1}.UrzaService/ListBlueprints")
    p.authorize("admin", f"{V1}.UrzaService/RetireBlueprint")
    p.authorize(ANONYMOUS, "/grpc.health.v1.Health/Check")
    with pytest.raises(AuthError) as denied:
        p.authorize("ops", f"{V1}.UrzaService/RetireBlueprint")
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "'ops' may not call RetireBlueprint" in str(denied.value)
    with pytest.raises(AuthError) as anonymous:
        p.authorize(ANONYMOUS, f"{V1}.UrzaService/ListBlueprints")
    assert anonymous.value.code == grpc.StatusCode.UNAUTHENTICATED
    narrow = policy(tmp_path, grant_read=("admin",))
    with pytest.raises(AuthError):
        narrow.authorize("ops", f"{V1}.UrzaService/ListBlueprints")


def test_auth_off_lets_every_caller_call_everything(tmp_path) -> None:
    p = policy(tmp_path, required=False)
    p.authorize(ANONYMOUS, f"{V1}.UrzaService/RetireBlueprint")
    with pytest.raises(AuthError):  # a wrong token is still refused, never downgraded
        p.identify([("authorization", "Bearer wrong")], {})


@pytest.mark.parametrize("content", ["ops\n", "ops notahexdigest\n", f"b@d! {'0' * 64}\n",
                                     f"a {'0' * 64}\nb {'0' * 64}\n", f"a {'0' * 64} extra\n"])
def test_tokens_file_is_checked(tmp_path, content) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(ConfigError, match="auth_tokens_file"):
        load_tokens(str(path))
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(str(tmp_path / "missing"))


@pytest.mark.parametrize("settings, message", [
    ({"host": "0.0.0.0"}, "auth: off is only allowed on a loopback host"),
    ({"tls": True}, "tls_cert: required"),
    ({"tls": True, "tls_cert": "c.pem", "tls_key": "k.pem"}, "tls_ca: required"),
    ({"tls_cert": "c.pem"}, "tls is off"),
    ({"auth": True, "grant_admin": ("bad name",)}, "grant_admin"),
])
def test_security_settings_are_validated(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(ServerConfig(), **settings).validate()
    dataclasses.replace(ServerConfig(), host="0.0.0.0", auth=True).validate()
    dataclasses.replace(ServerConfig(), tls=True, tls_cert="c", tls_key="k", tls_client_auth=False).validate()


def test_quota_bounds_a_burst_and_refills() -> None:
    now = [0.0]
    quota = RateQuota("compile_job", 3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        quota.take("ops")
    with pytest.raises(ResourceExhausted, match=r"compile_job: quota of 3 per 60 s for 'ops' is used up; retry in 20 s"):
        quota.take("ops")
    quota.take("admin")  # per identity
    now[0] = 20.0
    quota.take("ops")
    with pytest.raises(ResourceExhausted):
        quota.take("ops")


def test_security_settings_come_from_toml_env_and_flags(tmp_path) -> None:
    from esper.runtime.config import load_config

    toml = tmp_path / "esper.toml"
    toml.write_text('[defaults]\ntls = true\ntls_cert = "c.pem"\ntls_key = "k.pem"\ntls_ca = "ca.pem"\n'
                    'auth = true\ngrant_admin = ["admin", "ops"]\n')
    config = load_config(ServerConfig, "urza", toml_path=toml, env={"ESPER_GRANT_REPORT": "tamiyo,ops"},
                         overrides={"tls_client_auth": "false"})
    assert (config.tls, config.tls_cert, config.tls_key, config.tls_ca) == (True, "c.pem", "k.pem", "ca.pem")
    assert config.auth and not config.tls_client_auth
    assert config.grant_admin == ("admin", "ops") and config.grant_report == ("tamiyo", "ops")
