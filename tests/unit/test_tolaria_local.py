"""The in-process heuristic policy grows a seed on real data (digits) within a few
epochs, with no server; the two documented examples run."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

from esper.leyline.v1.control_pb2 import AckStatus
from esper.tolaria import TolariaConfig, Trainer
from esper.tolaria.optim import SEED_GROUP_KEY
from esper.tolaria.tasks import load_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_local_heuristic_grows_a_seed_on_digits() -> None:
    # The wide host plateaus within 12 epochs; the narrow default host (a capacity
    # bottleneck) keeps improving longer and first plateaus around epoch 15.
    task = load_task("digits", batch_size=64, seed=0, host="wide")
    trainer = Trainer(task.model, lambda p: torch.optim.Adam(p, lr=1e-2), task.train_loader,
                      task.val_loader, epochs=12, example_input=task.example_input,
                      config=TolariaConfig(progress=False))
    applied, seed_groups = [], set()
    trainer.session.ack_listeners.append(
        lambda a: a.status == AckStatus.ACK_STATUS_APPLIED and applied.append(a))
    trainer.session.model.seed_added_listeners.append(
        lambda slot, params: seed_groups.update(
            g[SEED_GROUP_KEY] for g in trainer.optimizer.param_groups if SEED_GROUP_KEY in g))
    summary = trainer.fit()
    germinated = [a for a in applied if a.reason.startswith("germinated")]
    assert germinated, f"no seed grew: {summary}"
    assert germinated[0].seed_id and seed_groups
    assert summary["val_accuracy"] > 0.9
    # WAIT decisions are acked APPLIED on the wire but counted apart in the summary.
    waits = [a for a in applied if a.reason.startswith("waiting")]
    assert waits and summary.decisions["waits"] == len(waits)
    assert summary.decisions["applied"] == len(applied) - len(waits) >= len(germinated)
    assert summary.seeds_germinated == len(germinated)
    assert [s.seed_id for s in summary.seeds] == [a.seed_id for a in germinated]


@pytest.mark.parametrize("script", ["own_loop.py", "trainer.py"])
def test_examples_run(script, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [script, "--epochs", "2"] +
                        (["--no-progress"] if script == "trainer.py" else []))
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out
    assert ": 2 epochs," in out and " germinated, " in out and " fossilized, " in out


def test_readme_wrap_example_runs(capsys) -> None:
    readme = (EXAMPLES.parent / "clients" / "esper" / "tolaria" / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 12  # "a dozen lines"
    # The quick start validates on held-out rows, never with the training loss.
    assert "x[1000:]" in code and '"val_loss": loss' not in code
    main_readme = (EXAMPLES.parent / "README.md").read_text()
    assert code in main_readme, "README.md and Tolaria's README show different snippets"
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102
    assert ": 30 epochs, 600 steps" in capsys.readouterr().out
