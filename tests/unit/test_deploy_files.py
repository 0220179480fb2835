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
    result = subprocess.run(
        ["docker-compose", "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True, timeout=60,
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
