"""Transport security, identity and authorisation of a real Esper server (Tamiyo, started
through the one runtime builder) on loopback, with certificates from `esper certs`
(esper.runtime.certs): plaintext and a wrong CA refused, missing or wrong tokens
UNAUTHENTICATED, ungranted admin calls PERMISSION_DENIED, the right identity served,
sessions owned by their opener, grpcurl with the dev certificates."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from esper.leyline.v1 import tamiyo_pb2
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient
from esper.runtime.auth import token_digest
from esper.runtime.certs import CA_CERT, cert_paths, make_dev_pki
from esper.runtime.server import StartupError, start_server
from esper.tamiyo import service as tamiyo_service
from tests.integration.test_tamiyo_server import Client, open_message, snap, tamiyo_config

pytestmark = pytest.mark.integration

WAIT_S = 20.0
OPS_TOKEN, ADMIN_TOKEN = "ops-token-1", "admin-token-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    make_dev_pki(root, clients=("admin", "tolaria", "mallory"))
    # A second CA that issues an `admin` certificate the servers must not trust.
    make_dev_pki(root / "rogue", servers=("tamiyo",), clients=("admin",))
    (root / "tokens").write_text(f"ops {token_digest(OPS_TOKEN)}\nadmin {token_digest(ADMIN_TOKEN)}\n")
    return root


def server_tls(pki: Path, *, client_auth: bool = True, **more) -> dict:
    served = cert_paths(pki, "tamiyo")
    return {"tls": True, "tls_cert": str(served.cert), "tls_key": str(served.key),
            "tls_ca": str(pki / CA_CERT), "tls_client_auth": client_auth, **more}


def as_identity(pki: Path, identity: str | None, token: str | None = None) -> ChannelSecurity:
    paths = cert_paths(pki, identity) if identity else None
    return ChannelSecurity(tls=True, ca_file=str(pki / CA_CERT), token=token,
                           cert_file=str(paths.cert) if paths else None,
                           key_file=str(paths.key) if paths else None)


@contextlib.asynccontextmanager
async def serving(**settings):
    running = await start_server(tamiyo_service.SPEC, tamiyo_config(publish_events=False, **settings))
    try:
        yield running
    finally:
        await running.stop(0)


@contextlib.asynccontextmanager
async def stub_as(address: str, security: ChannelSecurity):
    client = TamiyoClient(address, security=security)
    try:
        yield client.stub, client.channel
    finally:
        await client.close()


async def code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def health(channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S)
    return reply.status


async def test_plaintext_and_a_wrong_ca_are_refused(pki) -> None:
    async with serving(**server_tls(pki, auth=True)) as running:
        async with stub_as(running.address, as_identity(pki, "admin")) as (stub, channel):
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        plaintext = ChannelSecurity()
        rogue_ca = as_identity(pki / "rogue", "admin")  # trusts another CA, presents its cert
        rogue_cert = dataclasses.replace(rogue_ca, ca_file=str(pki / CA_CERT))  # right CA, wrong cert
        no_cert = as_identity(pki, None)  # mutual TLS needs a client certificate
        for security in (plaintext, rogue_ca, rogue_cert, no_cert):
            async with stub_as(running.address, security) as (stub, _):
                call = stub.ListPolicies(tamiyo_pb2.ListPoliciesRequest(), timeout=5)
                assert await code_of(call) == grpc.StatusCode.UNAVAILABLE, security


async def test_tokens_identify_and_grants_authorise(pki) -> None:
    settings = server_tls(pki, client_auth=False, auth=True, auth_tokens_file=str(pki / "tokens"))
    async with serving(**settings) as running:
        address = running.address

        async def code(token, rpc="ListPolicies", request=tamiyo_pb2.ListPoliciesRequest()):
            async with stub_as(address, as_identity(pki, None, token)) as (stub, _):
                return await code_of(getattr(stub, rpc)(request, timeout=WAIT_S))

        reload = ("ReloadPolicy", tamiyo_pb2.ReloadPolicyRequest(name="gnn"))
        assert await code(None) == grpc.StatusCode.UNAUTHENTICATED
        assert await code("not-a-token") == grpc.StatusCode.UNAUTHENTICATED
        assert await code(OPS_TOKEN) == grpc.StatusCode.OK
        assert await code(OPS_TOKEN, *reload) == grpc.StatusCode.PERMISSION_DENIED
        # The admin passes authorisation; Tamiyo then says no gnn artifact is configured.
        assert await code(ADMIN_TOKEN, *reload) == grpc.StatusCode.FAILED_PRECONDITION
        async with stub_as(address, as_identity(pki, None)) as (stub, channel):
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING  # open
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.ReloadPolicy(tamiyo_pb2.ReloadPolicyRequest(name="gnn"),
                                        metadata=(("authorization", f"Bearer {OPS_TOKEN}"),), timeout=WAIT_S)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'ops' may not call ReloadPolicy" in denied.value.details()


async def test_certificate_identities_are_authorised_per_rpc(pki) -> None:
    async with serving(**server_tls(pki, auth=True)) as running:
        for identity, expected in (("tolaria", grpc.StatusCode.PERMISSION_DENIED),
                                   ("admin", grpc.StatusCode.FAILED_PRECONDITION)):
            async with stub_as(running.address, as_identity(pki, identity)) as (stub, _):
                assert await code_of(stub.ListPolicies(tamiyo_pb2.ListPoliciesRequest(), timeout=WAIT_S)) \
                    == grpc.StatusCode.OK
                call = stub.ReloadPolicy(tamiyo_pb2.ReloadPolicyRequest(name="gnn"), timeout=WAIT_S)
                assert await code_of(call) == expected, identity


async def test_a_run_belongs_to_its_owner_and_absurd_steps_do_not_poison_it(pki) -> None:
    async with serving(**server_tls(pki, auth=True), max_step_advance=1000) as running, \
            stub_as(running.address, as_identity(pki, "tolaria")) as (owner_stub, _), \
            stub_as(running.address, as_identity(pki, "mallory")) as (other_stub, _):
        owner = Client(owner_stub)
        await owner.send(open=open_message("run-owned"))
        assert (await owner.next("accept")).accept.run_id == "run-owned"
        await owner.send(snapshot=snap(10, "run-owned"))
        # Another identity cannot supersede (or resume) the run...
        intruder = Client(other_stub)
        await intruder.send(open=open_message("run-owned"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await intruder.next()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "belongs to another identity" in refused.value.details()
        await intruder.close()
        # ...and the owner's stream goes on: a step of 2^63 is refused with a warning, the
        # run's step stays where it was, and the next real snapshot counts.
        absurd = snap(11, "run-owned")
        absurd.step = absurd.sequence = 2**63
        await owner.send(snapshot=absurd)
        warning = (await owner.next("warning")).warning
        assert "snapshot.step" in warning.detail  # refused by the field checks or the run
        await owner.send(snapshot=snap(5000, "run-owned"))  # further than max_step_advance
        warning = (await owner.next("warning")).warning
        assert warning.code == "step_jump" and "more than 1000 steps after" in warning.detail
        await owner.send(snapshot=snap(10, "run-owned"))
        assert (await owner.next("warning")).warning.code == "repeated_snapshot"
        await owner.send(snapshot=snap(15, "run-owned"))
        await asyncio.wait_for(_heartbeat_at(owner, 15), WAIT_S)
        await owner.close()


async def _heartbeat_at(client: Client, step: int) -> None:
    while (await client.next("heartbeat", skip_heartbeats=False)).heartbeat.step != step:
        pass


async def test_bad_security_settings_fail_the_start(pki, tmp_path) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    for settings, fragment in (
            (server_tls(pki, tls_cert=str(tmp_path / "missing.pem")), "tls_cert: cannot read"),
            (server_tls(pki, tls_ca=str(not_pem)), "tls_ca:"),
            ({"auth": True, "auth_tokens_file": str(tmp_path / "none")}, "auth_tokens_file")):
        with pytest.raises(StartupError, match=fragment):
            await start_server(tamiyo_service.SPEC, tamiyo_config(**settings))


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl is a dev dependency")
async def test_grpcurl_with_the_dev_certificates(pki) -> None:
    async with serving(**server_tls(pki, auth=True)) as running:
        admin = cert_paths(pki, "admin")
        base = ["grpcurl", "-cacert", str(pki / CA_CERT), "-cert", str(admin.cert), "-key", str(admin.key)]
        listed = await _run([*base, running.address, "list"])
        assert "esper.leyline.v1.TamiyoService" in listed
        reply = await _run([*base, "-d", "{}", running.address, "esper.leyline.v1.TamiyoService/ListPolicies"])
        assert "heuristic" in json.dumps(json.loads(reply))
        with pytest.raises(AssertionError, match="Failed to dial"):
            await _run(["grpcurl", "-plaintext", running.address, "list"])


async def _run(argv: list[str]) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode == 0, err.decode()
    return out.decode()
