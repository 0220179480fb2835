"""Shared pytest configuration. Fixtures live in tests/fixtures/ as plugins."""

import os
import sys
from pathlib import Path

# Tools installed into the virtual environment (grpcurl, buf, esper) are found even when
# pytest is run as .venv/bin/pytest without activating the environment.
_VENV_BIN = str(Path(sys.executable).parent)
if _VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _VENV_BIN + os.pathsep + os.environ.get("PATH", "")

pytest_plugins: list[str] = [
    "tests.fixtures.infra",
    "tests.fixtures.torch_threads",
]
