"""The run-id rule is one definition (esper.leyline.ids) that Tolaria checks at attach
and Tamiyo checks on Session open and Decide."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from esper.leyline.ids import MAX_RUN_ID_LENGTH, run_id_problem, validate_run_id
from esper.tamiyo.validation import InvalidInput, check_run_id
from esper.tolaria import TolariaConfig, attach

GOOD = ["a", "run-0f3c", "exp_1.2:seed-3", "A" * MAX_RUN_ID_LENGTH]
BAD = ["", "-flag", ".hidden", "a b", "é", "run\n", "x" * (MAX_RUN_ID_LENGTH + 1), "a/b"]


@pytest.mark.parametrize("run_id", GOOD)
def test_good_run_ids_pass_everywhere(run_id: str) -> None:
    assert run_id_problem(run_id) is None and validate_run_id(run_id) == run_id
    check_run_id("open.run_id", run_id)
    assert TolariaConfig(run_id=run_id).run_id == run_id


@pytest.mark.parametrize("run_id", BAD)
def test_bad_run_ids_are_refused_by_tolaria_and_tamiyo(run_id: str) -> None:
    assert run_id_problem(run_id) is not None
    with pytest.raises(InvalidInput, match=r"open\.run_id: .* is not a run id"):
        check_run_id("open.run_id", run_id)
    with pytest.raises(ValueError, match="run_id: .* is not a run id"):
        TolariaConfig(run_id=run_id)


def test_attach_checks_a_run_id_set_after_construction() -> None:
    config = TolariaConfig()
    config.run_id = "has space"
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="run_id"):
        attach(model, torch.optim.SGD(model.parameters(), lr=0.1), "none", config=config)


def test_attach_never_changes_the_callers_config(tmp_path) -> None:
    from esper.tolaria import save_checkpoint

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    first = attach(model, torch.optim.SGD(model.parameters(), lr=0.1), "none",
                   config=TolariaConfig(run_id="saved-run"))
    save_checkpoint(tmp_path / "c.pt", first)
    first.close()
    config = TolariaConfig(run_id="mine", snapshot_every=7)
    before = dataclasses.asdict(config)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 4))
    session = attach(model2, torch.optim.SGD(model2.parameters(), lr=0.1), "none",
                     config=config, resume=str(tmp_path / "c.pt"))
    assert session.run_id == "saved-run" and session.config.snapshot_every == 7
    assert session.config is not config and dataclasses.asdict(config) == before
    session.close()
