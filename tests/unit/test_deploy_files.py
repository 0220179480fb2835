"""The production-shaped deploy files are valid (no Docker engine here: they are checked,
not run): the compose file by docker-compose's own validator, the Dockerfile by hadolint."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid():
    import os

    result = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **COMPOSE_SECRETS},
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_dockerfile_lints_clean():
    result = subprocess.run(
        ["hadolint", "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_every_server_with_health_checks():
    text = (DEPLOY / "docker-compose.yml").read_text()
    for name in ("urza", "tezzeret", "tamiyo", "nissa", "kafka", "postgres", "minio",
                 "prometheus", "grafana", "otel-collector"):
        assert f"\n  {name}:\n" in text
    assert "esper.runtime.healthcheck" in text


def test_grafana_dashboard_queries_metrics_the_servers_export():
    import json
    import re

    from prometheus_client import REGISTRY

    import esper.nissa.metrics  # noqa: F401  (registers Nissa's metrics)
    import esper.nissa.workers  # noqa: F401  (registers the ingest workers' metrics)
    import esper.oona.consumer  # noqa: F401  (registers Oona's consumer metrics)
    import esper.oona.producer  # noqa: F401  (registers Oona's producer metrics)
    import esper.runtime.metrics  # noqa: F401  (registers the RPC metrics)

    exported = {m.name for m in REGISTRY.collect()}
    exported |= {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported}
    dashboard = json.loads((DEPLOY / "grafana/dashboards/esper.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"\b(esper_[a-z_]+)", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)


# -- the compose stack is secure by default ------------------------------------------------
COMPOSE_SECRETS = {"ESPER_CERTS_DIR": "/tmp/certs", "POSTGRES_PASSWORD": "pg-test", "KAFKA_PASSWORD": "kafka-test",
                   "MINIO_ROOT_USER": "minio-test", "MINIO_ROOT_PASSWORD": "minio-secret-test",
                   "GRAFANA_ADMIN_PASSWORD": "grafana-test"}
ESPER_SERVERS = ("urza", "tezzeret", "tamiyo", "nissa")


def _compose() -> dict:
    import yaml  # PyYAML resolves the anchors and `<<` merges as compose does

    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing):
    import os

    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    env.update({k: v for k, v in COMPOSE_SECRETS.items() if k != missing})
    result = subprocess.run(["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and f"set {missing}" in result.stderr
    env[missing] = COMPOSE_SECRETS[missing]
    ok = subprocess.run(["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                        capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr


def test_compose_publishes_only_the_servers_and_grafana_on_loopback():
    published = {name: svc.get("ports", []) for name, svc in _compose().items() if svc.get("ports")}
    assert set(published) == {*ESPER_SERVERS, "grafana"}
    for name, ports in published.items():
        assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)


def test_compose_servers_use_mutual_tls_and_auth_with_their_own_certificate():
    services = _compose()
    for name in ESPER_SERVERS:
        env = services[name]["environment"]
        assert env["ESPER_TLS"] == "true" and env["ESPER_AUTH"] == "true" and env["ESPER_TLS_CLIENT_AUTH"] == "true"
        assert env["ESPER_TLS_CERT"] == f"/certs/{name}.pem" and env["ESPER_TLS_KEY"] == f"/certs/{name}-key.pem"
        assert env["ESPER_KAFKA_SASL_MECHANISM"] == "PLAIN"


def test_compose_bakes_in_no_credential():
    text = (DEPLOY / "docker-compose.yml").read_text()
    services = _compose()
    secrets = [services["postgres"]["environment"]["POSTGRES_PASSWORD"],
               services["minio"]["environment"]["MINIO_ROOT_USER"],
               services["minio"]["environment"]["MINIO_ROOT_PASSWORD"],
               services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"],
               *(services[n]["environment"][k] for n in ESPER_SERVERS
                 for k in ("ESPER_KAFKA_PASSWORD", "ESPER_S3_ACCESS_KEY", "ESPER_S3_SECRET_KEY"))]
    assert all(s.startswith("${") and ":?" in s for s in secrets), secrets
    assert "esper-secret" not in text and "esper:esper@" not in text
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    kafka = services["kafka"]["environment"]
    listeners = kafka["KAFKA_LISTENERS"].split(",")
    assert listeners == ["SASL_PLAINTEXT://:9092", "CONTROLLER://localhost:9093"]  # no open client listener
    assert services["postgres"]["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"


def test_compose_runs_two_tamiyo_replicas_sharing_runs_in_postgres():
    services = _compose()
    tamiyo = services["tamiyo"]
    assert tamiyo["deploy"]["replicas"] == 2
    assert tamiyo["environment"]["ESPER_POSTGRES_DSN"].startswith("postgresql://")
    assert "postgres" in tamiyo["depends_on"]
    # Every client in the network reaches both replicas through the one name.
    assert all(s["environment"]["ESPER_TAMIYO_ADDRESS"] == "dns:///tamiyo:50051" for n, s in services.items()
               if n in ESPER_SERVERS)
    # One host port per replica.
    assert tamiyo["ports"] == ["127.0.0.1:50053-50054:50051"]
