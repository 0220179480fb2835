"""The light client install: `pip install esper` into a fresh virtualenv brings torch, grpcio,
protobuf (and safetensors, numpy) and none of the servers' dependencies; the README's
snippet trains there, RemotePolicy imports, and the `esper` command says it needs the
server extra instead of failing with a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# Server-side dependencies that must not come with the light install.
SERVER_ONLY = ("aiokafka", "asyncpg", "minio", "torch-geometric", "prometheus-client",
               "opentelemetry-sdk", "grpcio-reflection", "localbucket", "scikit-learn")
INSTALL_TIMEOUT_S = 600


def readme_snippet() -> str:
    """The Python block of the README's "Wrap your own model" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Wrap your own model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, **kwargs)


@pytest.fixture(scope="module")
def light_env(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("light") / "venv"
    venv.create(env, with_pip=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
    # torch==2.13.0 first: the local CPU wheel (the project pins the same version).
    for args in (["torch==2.13.0"], [str(REPO)]):
        done = _run(pip + args, timeout=INSTALL_TIMEOUT_S)
        assert done.returncode == 0, done.stdout + done.stderr
    return env


def test_light_install_has_no_server_dependencies(light_env: Path) -> None:
    done = _run([str(light_env / "bin" / "python"), "-m", "pip", "list", "--format=freeze"])
    installed = {line.split("==")[0].lower() for line in done.stdout.splitlines()}
    assert {"torch", "grpcio", "protobuf", "esper"} <= installed
    assert not installed & set(SERVER_ONLY), installed & set(SERVER_ONLY)


def test_readme_snippet_runs_in_the_light_install(light_env: Path, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(readme_snippet() + "\nfrom esper.tolaria import RemotePolicy, LocalPolicy\n")
    done = _run([str(light_env / "bin" / "python"), str(script)], cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip(), "the snippet prints the session's summary"


def test_the_command_line_asks_for_the_server_extra(light_env: Path) -> None:
    done = _run([str(light_env / "bin" / "esper"), "status"], timeout=120)
    assert done.returncode == 2 and "pip install 'esper[server]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_light_and_full_installs_agree_on_the_snippet() -> None:
    # The same snippet in the development install (every extra): a guard that the test
    # above exercises the README as written, not a stale copy.
    assert "esper.tolaria.attach" in readme_snippet()
    done = _run([sys.executable, "-c", readme_snippet()], timeout=600)
    assert done.returncode == 0, done.stderr
