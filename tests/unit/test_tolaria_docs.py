"""Everything the READMEs and examples import is importable from where they say, and the
names the Tolaria README uses bare (RemotePolicy("host:port"), ...) are in esper.tolaria."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "clients" / "esper" / "tolaria" / "README.md",
        *sorted((ROOT / "examples").glob("*.py"))]
FROM_IMPORT = re.compile(r"^\s*from (esper[\w.]*) import \(?([\w, ]+)\)?", re.M)
# API the Tolaria README names without a module: users import them from esper.tolaria.
BARE_NAMES = ["attach", "Trainer", "TolariaConfig", "LocalPolicy", "RemotePolicy",
              "ReplayPolicy", "HeuristicConfig", "LOCAL_HEURISTIC", "RunSummary",
              "SeedSummary", "save_checkpoint", "load_checkpoint", "CheckpointError"]


def _imports() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for module, names in FROM_IMPORT.findall(doc.read_text()):
            found += [(doc.name, module, n.strip()) for n in names.split(",") if n.strip()]
    return found


def test_the_docs_import_something() -> None:
    assert {m for _, m, _ in _imports()} >= {"esper.tolaria"}


@pytest.mark.parametrize("doc, module, name", _imports())
def test_every_documented_import_works(doc: str, module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{doc}: from {module} import {name}"


@pytest.mark.parametrize("name", BARE_NAMES)
def test_tolaria_exports_what_its_readme_names(name: str) -> None:
    import esper.tolaria

    assert name in esper.tolaria.__all__ and hasattr(esper.tolaria, name)
