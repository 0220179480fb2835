"""`esper serve NAME` as a user runs it: each server starts against the real dependencies,
grpcurl lists and describes its whole API through reflection (no proto files), SIGTERM
stops it cleanly, and bad configuration fails fast naming the problem."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from esper.runtime.infra import free_port
from esper.runtime.registry import SERVICE_NAMES, grpc_service_name

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def service_env(postgres_dsn, kafka_bootstrap, object_store, tmp_path_factory):
    env = dict(os.environ)
    env.update(
        ESPER_POSTGRES_DSN=postgres_dsn,
        ESPER_KAFKA_BOOTSTRAP=kafka_bootstrap,
        ESPER_S3_ENDPOINT=object_store.url,
        ESPER_S3_ACCESS_KEY=object_store.access_key,
        ESPER_S3_SECRET_KEY=object_store.secret_key,
        ESPER_S3_BUCKET=object_store.bucket,
        ESPER_STATE_DIR=str(tmp_path_factory.mktemp("serve-state")),
        ESPER_METRICS_PORT="-1",
    )
    return env


def _serve(name: str, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "esper.cli.main", "serve", name, *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_serving(proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read()}")
        match = re.search(r"serving on (\S+:\d+)", line)
        if match:
            return match.group(1)
    raise AssertionError("server did not start in time")


def _grpcurl(*args: str) -> str:
    result = subprocess.run(["grpcurl", "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl not installed")
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_serve_lists_and_describes_full_api(name, service_env):
    env = dict(service_env)
    # The Tezzeret server also needs Urza's address; an unused one is fine for listing.
    env.setdefault("ESPER_URZA_ADDRESS", f"127.0.0.1:{free_port()}")
    proc = _serve(name, env, "--port", str(free_port()))
    try:
        address = _wait_serving(proc)
        listed = _grpcurl(address, "list").split()
        service = grpc_service_name(name)
        assert service in listed and "grpc.health.v1.Health" in listed
        described = _grpcurl(address, "describe", service)
        from google.protobuf import descriptor_pool

        from esper.leyline.v1 import (  # noqa: F401  (descriptors of every service)
            nissa_pb2,
            tamiyo_pb2,
            tezzeret_pb2,
            urza_pb2,
        )

        desc = descriptor_pool.Default().FindServiceByName(service)
        for method in desc.methods:
            assert f"rpc {method.name}" in described
        first = desc.methods[0].input_type.full_name
        assert "message" in _grpcurl(address, "describe", first)
        assert '"SERVING"' in _grpcurl(address, "grpc.health.v1.Health/Check")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--port", "99999"), "port: 99999"),
        (("--metrics-port", "-7"), "metrics_port"),
        (("--log-format", "xml"), "log_format"),
        (("--host", "example"), "host"),
    ],
)
def test_bad_flags_fail_fast(args, needle, service_env):
    proc = _serve("tamiyo", service_env, *args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert needle in err


def test_unknown_toml_key_fails_fast(tmp_path, service_env):
    path = tmp_path / "esper.toml"
    path.write_text("[tamiyo]\nporrt = 1\n")
    proc = _serve("tamiyo", service_env, "--config", str(path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "tamiyo.porrt" in err


@pytest.mark.parametrize("name", ["urza", "nissa", "tezzeret"])
def test_unreachable_database_fails_fast_naming_it(name, service_env):
    env = dict(service_env)
    env["ESPER_POSTGRES_DSN"] = f"postgresql://postgres@127.0.0.1:{free_port()}/esper"
    env["ESPER_POSTGRES_CONNECT_TIMEOUT"] = "2"
    env.setdefault("ESPER_URZA_ADDRESS", f"127.0.0.1:{free_port()}")
    proc = _serve(name, env)
    _, err = proc.communicate(timeout=120)  # exits by itself: it never waits forever
    assert proc.returncode == 2, err
    assert "postgres_dsn" in err
