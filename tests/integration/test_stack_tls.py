"""`esper up --tls`: the whole local stack with mutual TLS and auth between every part,
for real. `esper status` says so; plaintext is refused; the CLI reaches every server with
the stack's admin certificate; a compile submitted through the CLI is compiled and its
kernel registered in Urza (Tezzeret -> Urza over mutual TLS, with Tezzeret's identity);
a client identity without the admin grant cannot retire a blueprint; grpcurl with the
development certificates works as the README shows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient
from esper.rpc.health import check_health
from esper.runtime.stack.tls import tls_dir
from tests.integration.test_stack import CLI_TIMEOUT_S, state_dir  # noqa: F401 - the fixture
from tests.integration.test_tamiyo_server import Client, open_message

pytestmark = pytest.mark.integration


def _esper(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESPER_TLS", "ESPER_TOKEN"))}
    env["ESPER_STATE_DIR"] = str(state)
    return subprocess.run([sys.executable, "-m", "esper.cli.main", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, check=False, env=env)


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["grpcurl", *args], capture_output=True, text=True, timeout=60, check=False)


def test_up_tls_runs_every_part_with_mutual_tls(state_dir: Path) -> None:  # noqa: F811
    result = _esper(state_dir, "up", "--tls")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "tls: on (mutual TLS" in result.stdout
    status = _esper(state_dir, "status")
    assert status.returncode == 0, status.stdout
    assert "tls: on (mutual TLS" in status.stdout and status.stdout.count("healthy") == 7
    certs = tls_dir(state_dir)
    assert oct((certs / "admin-key.pem").stat().st_mode & 0o777) == "0o600"
    urza = _esper(state_dir, "status", "--address", "urza").stdout.strip()
    assert check_health(urza, security=ChannelSecurity()) == "UNREACHABLE"  # plaintext refused
    # The CLI uses the stack's admin certificate: a compile goes CLI -> Tezzeret -> Urza.
    submitted = _esper(state_dir, "tezzeret", "submit", "BP-MLP-GELU@1.0.0", "--channels", "8", "--wait")
    assert submitted.returncode == 0, submitted.stderr + submitted.stdout
    kernels = _esper(state_dir, "catalog", "kernels")
    assert kernels.returncode == 0 and "BP-MLP-GELU@1.0.0" in kernels.stdout, kernels.stderr
    # grpcurl with the development certificates; tolaria may read but not retire.
    admin = ["-cacert", str(certs / "ca.pem"), "-cert", str(certs / "admin.pem"), "-key", str(certs / "admin-key.pem")]
    tolaria = ["-cacert", str(certs / "ca.pem"), "-cert", str(certs / "tolaria.pem"), "-key", str(certs / "tolaria-key.pem")]
    listed = _grpcurl(*admin, urza, "list")
    assert "esper.leyline.v1.UrzaService" in listed.stdout, listed.stderr
    read = _grpcurl(*tolaria, "-d", "{}", urza, "esper.leyline.v1.UrzaService/ListBlueprints")
    assert read.returncode == 0 and "BP-MLP-GELU" in read.stdout, read.stderr
    retire = _grpcurl(*tolaria, "-d", '{"blueprint_ref": "BP-MLP-GELU@1.0.0", "reason": "test"}',
                      urza, "esper.leyline.v1.UrzaService/RetireBlueprint")
    assert "PermissionDenied" in retire.stdout + retire.stderr
    assert _grpcurl("-plaintext", urza, "list").returncode != 0
    _readme_grpcurl_commands_work(state_dir)
    # Tolaria (esper train) opens its Tamiyo session over mutual TLS as `tolaria`: the run is
    # then its own, and even the admin identity cannot supersede it.
    tamiyo = _esper(state_dir, "status", "--address", "tamiyo").stdout.strip()
    trained = _esper(state_dir, "train", "--epochs", "1", "--tamiyo", tamiyo, "--urza", urza,
                     "--no-progress", "--run-id", "tls-run")
    assert trained.returncode == 0, trained.stderr
    assert "session open run_id=tls-run" in (state_dir / "logs" / "tamiyo.log").read_text()
    assert asyncio.run(_open_as_admin(state_dir, tamiyo, "tls-run")) == grpc.StatusCode.PERMISSION_DENIED
    # TLS cannot be switched off under a running stack.
    switched = _esper(state_dir, "up", "--no-tls")
    assert switched.returncode == 2 and "esper down" in switched.stderr


async def _open_as_admin(state: Path, address: str, run_id: str) -> grpc.StatusCode:
    certs = tls_dir(state)
    security = ChannelSecurity(tls=True, ca_file=str(certs / "ca.pem"), cert_file=str(certs / "admin.pem"),
                               key_file=str(certs / "admin-key.pem"))
    client = TamiyoClient(address, security=security)
    try:
        session = Client(client.stub)
        await session.send(open=open_message(run_id))
        try:
            await session.next()
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await session.close()
        return grpc.StatusCode.OK
    finally:
        await client.close()


def _readme_grpcurl_commands_work(state: Path) -> None:
    """The README's grpcurl block, run as written from a directory whose ./.esper is the stack."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("the development certificates:\n\n```bash\n", 1)[1].split("```", 1)[0]
    assert "grpcurl -cacert $S/ca.pem" in block
    workdir = state.parent / f"{state.name}-cwd"
    workdir.mkdir()
    (workdir / ".esper").symlink_to(state)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESPER_TLS", "ESPER_TOKEN", "ESPER_STATE"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    ran = subprocess.run(["bash", "-euc", block], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=CLI_TIMEOUT_S, check=False)
    assert ran.returncode == 0, ran.stderr
    assert "esper.leyline.v1.UrzaService" in ran.stdout and '"blueprints"' in ran.stdout
