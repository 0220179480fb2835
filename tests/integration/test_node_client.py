"""The Node.js client (clients/node/), built only from proto/, against a real Urza
(PostgreSQL, object store, broker) and a real Tamiyo over loopback: it lists the catalogue,
gets a decision from Decide, and runs a whole Session — a seed germinated with one of Urza's
kernels, advanced stage by stage to FOSSILIZED, every decision acked once, the field report
sent, the epoch-end repeat accepted, and a re-open resumed with nothing re-sent. Over TLS
with a bearer token and over mutual TLS, with the dev certificates of `esper certs`: served
with the right settings, refused without the token, with the wrong CA or in plaintext."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from esper.leyline.version import contract_version
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import UrzaClient
from esper.runtime.certs import CA_CERT, cert_paths
from esper.runtime.server import start_server
from esper.tamiyo import service as tamiyo_service
from tests.integration.test_runtime_security import OPS_TOKEN, pki, server_tls  # noqa: F401 (fixture)
from tests.integration.test_tamiyo_server import tamiyo_config, urza  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "clients" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")
# npm ci and a node script on a loaded 2-core machine; never a timing assertion.
RUN_TIMEOUT_S = 240

if NODE is None or NPM is None:
    pytest.skip("node and npm are not installed (scripts/bootstrap.sh installs them with apt)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """clients/node/node_modules from the committed lockfile (`npm ci`), once."""
    modules = NODE_DIR / "node_modules"
    if not (modules / "@grpc" / "grpc-js").is_dir():
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=RUN_TIMEOUT_S, capture_output=True)
    return modules


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ESPER_ setting of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    return {**env, **extra}


async def node(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run clients/node/examples/SCRIPT off the event loop (the servers run on it)."""
    return await asyncio.to_thread(
        subprocess.run, [NODE, str(NODE_DIR / "examples" / script), *args], cwd=ROOT,
        env=env or clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def output_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_node_lists_urzas_blueprints_like_the_python_client(node_modules, urza):  # noqa: F811
    running, _registered = urza
    listed = output_json(await node("blueprints.js", "--address", running.address, "--json"))
    async with UrzaClient(running.address, security=ChannelSecurity()) as client:
        expected = {f"{r.spec.name}@{r.spec.version}" async for r in client.list_blueprints()}
    assert {b["ref"] for b in listed} == expected and len(listed) == len(expected) > 0
    assert all(b["family"].startswith("BLUEPRINT_FAMILY_") for b in listed)


async def test_node_decides_and_runs_a_full_session_with_acks(node_modules, urza):  # noqa: F811
    urza_running, registered = urza
    config = tamiyo_config(urza_address=urza_running.address, urza_timeout_s=5.0)
    tamiyo = await start_server(tamiyo_service.SPEC, config)
    try:
        decision = output_json(await node("decide.js", "--address", tamiyo.address, "--json",
                                          "--run-id", "run-node-decide"))
        assert decision["run_id"] == "run-node-decide" and decision["action"] == "germinate", decision
        assert decision["germinate"]["kernel_id"] in {k.kernel_id for k in registered}

        summary = output_json(await node("session.js", "--address", tamiyo.address, "--json",
                                         "--run-id", "run-node-session"))
        version = contract_version()
        assert summary["contract_version"] == {"major": version.major, "minor": version.minor, "patch": version.patch}
        assert summary["accept"]["snapshot_every_steps"] == config.snapshot_every_steps
        assert summary["accept"]["idle_timeout_seconds"] == config.idle_timeout_seconds
        assert not summary["accept"]["resumed"]
        decisions = summary["decisions"]
        # Every decision acked once: applied, or expired when a loaded machine delayed it past
        # its expiry step (Tamiyo then decides again); never refused.
        assert len({d["decision_id"] for d in decisions}) == len(decisions)
        assert sum(summary["acks"].values()) == len(decisions)
        assert {d["status"] for d in decisions} <= {"ACK_STATUS_APPLIED", "ACK_STATUS_EXPIRED"}, decisions
        applied = [d for d in decisions if d["status"] == "ACK_STATUS_APPLIED"]
        # One seed's whole life: germinated, advanced through each stage, fossilized.
        assert [d["action"] for d in applied] == ["germinate", *["advance"] * 4, "fossilize"], decisions
        assert [d["target_stage"] for d in applied if d["action"] == "advance"] == [
            "SEED_STAGE_TRAINING", "SEED_STAGE_BLENDING", "SEED_STAGE_SHADOWING", "SEED_STAGE_PROBATIONARY"]
        assert summary["field_reports"] == 1 and summary["warnings"] == {}
        (seed,) = summary["seeds"]
        assert seed["stage"] == "SEED_STAGE_FOSSILIZED" and seed["seed_id"].startswith("seed-")
        assert summary["resumed"] and summary["resent_after_resume"] == 0
    finally:
        await tamiyo.stop(0)


async def test_node_refuses_a_token_in_the_clear_and_reports_an_unreachable_server(node_modules):
    result = await node("blueprints.js", "--address", "192.0.2.1:50051", env=clean_env(ESPER_TOKEN="secret"))
    assert result.returncode == 2 and "in the clear" in result.stderr
    result = await node("blueprints.js", "--address", "127.0.0.1:1")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def tls_env(pki: Path, **more: str) -> dict[str, str]:  # noqa: F811 (pki is the fixture's value)
    return clean_env(ESPER_TLS="true", ESPER_TLS_CA=str(pki / CA_CERT), **more)


async def test_node_over_tls_with_a_bearer_token(node_modules, pki):  # noqa: F811
    settings = server_tls(pki, client_auth=False, auth=True, auth_tokens_file=str(pki / "tokens"))
    tamiyo = await start_server(tamiyo_service.SPEC, tamiyo_config(publish_events=False, **settings))
    try:
        address = tamiyo.address
        decision = output_json(await node("decide.js", "--address", address, "--json",
                                          env=tls_env(pki, ESPER_TOKEN=OPS_TOKEN)))
        # No Urza configured: a wait that says so, served over TLS to the token's identity.
        assert decision["action"] == "wait" and "no Urza configured" in decision["rationale"]
        token_file = pki / "node-token"
        token_file.write_text(OPS_TOKEN + "\n")
        summary = output_json(await node("session.js", "--address", address, "--json", "--max-steps", "60",
                                         env=tls_env(pki, ESPER_TOKEN_FILE=str(token_file))))
        assert summary["snapshots"] > 0 and summary["decisions"] == [] and summary["resumed"]
        refused = {
            "no token": tls_env(pki),
            "unknown token": tls_env(pki, ESPER_TOKEN="not-a-token"),
        }
        for why, env in refused.items():
            result = await node("decide.js", "--address", address, env=env)
            assert result.returncode == 1 and "UNAUTHENTICATED" in result.stderr, (why, result.stderr)
        wrong_ca = clean_env(ESPER_TLS="true", ESPER_TLS_CA=str(pki / "rogue" / CA_CERT), ESPER_TOKEN=OPS_TOKEN)
        plaintext = clean_env(ESPER_TOKEN=OPS_TOKEN)
        for why, env in (("wrong CA", wrong_ca), ("plaintext", plaintext)):
            result = await node("decide.js", "--address", address, env=env)
            assert result.returncode == 1 and "UNAVAILABLE" in result.stderr, (why, result.stderr)
    finally:
        await tamiyo.stop(0)


async def test_node_over_mutual_tls_with_a_client_certificate(node_modules, pki):  # noqa: F811
    tamiyo = await start_server(tamiyo_service.SPEC, tamiyo_config(publish_events=False, **server_tls(pki, auth=True)))
    try:
        tolaria = cert_paths(pki, "tolaria")
        env = tls_env(pki, ESPER_TLS_CERT=str(tolaria.cert), ESPER_TLS_KEY=str(tolaria.key))
        summary = output_json(await node("session.js", "--address", tamiyo.address, "--json", "--max-steps", "60",
                                         env=env))
        assert summary["accept"]["heartbeat_seconds"] == 1 and summary["resumed"]
        # Without a client certificate the handshake fails.
        result = await node("decide.js", "--address", tamiyo.address, env=tls_env(pki))
        assert result.returncode == 1 and "UNAVAILABLE" in result.stderr, result.stderr
        # Half a certificate is a configuration error, refused before any connection.
        result = await node("decide.js", "--address", tamiyo.address, env=tls_env(pki, ESPER_TLS_CERT=str(tolaria.cert)))
        assert result.returncode == 2 and "ESPER_TLS_KEY" in result.stderr
    finally:
        await tamiyo.stop(0)
