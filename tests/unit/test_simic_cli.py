"""`esper tamiyo` input validation: bad flags get exit code 2 and a message naming the flag."""

from __future__ import annotations

import pytest

from esper.cli.main import main
from tests.unit.test_simic_dataset import synthetic_episode


@pytest.mark.parametrize(("argv", "needle"), [
    (["tamiyo", "collect", "--episodes", "0", "--out", "{tmp}/d"], "--episodes"),
    (["tamiyo", "collect", "--episodes", "2", "--out", "{tmp}/d", "--epoch-repeats", "0"], "--epoch-repeats"),
    (["tamiyo", "evaluate", "--policy", "{tmp}/p.safetensors", "--epoch-repeats", "101"], "--epoch-repeats"),
    (["tamiyo", "collect", "--episodes", "2", "--out", "{tmp}/d", "--epsilon", "0.5", "0.1"], "--epsilon"),
    (["tamiyo", "train", "--data", "{tmp}/missing", "--out", "{tmp}/p.safetensors"], "no dataset directory"),
    (["tamiyo", "train", "--data", "{tmp}", "--out", "{tmp}/p.safetensors", "--bc-weight", "-1"], "--bc-weight"),
    (["tamiyo", "train", "--data", "{tmp}", "--out", "{tmp}/p.safetensors", "--awr-weight", "nan"], "--awr-weight"),
    (["tamiyo", "train", "--data", "{tmp}", "--out", "{tmp}/p.safetensors", "--action-balance", "-0.5"],
     "--action-balance"),
    (["tamiyo", "train", "--data", "{tmp}", "--out", "{tmp}/p.safetensors", "--candidate-bc-weight", "-1"],
     "--candidate-bc-weight"),
    (["tamiyo", "train", "--data", "{tmp}", "--out", "{tmp}/p.safetensors", "--action-balance", "inf"],
     "--action-balance"),
    (["tamiyo", "train", "--data", "{tmp}", "--out", "{tmp}/nodir/p.safetensors"], "does not exist"),
    (["tamiyo", "evaluate", "--policy", "{tmp}/none.safetensors"], "--policy"),
    (["tamiyo", "train", "--nissa-dsn", "postgresql://x@h/db", "--out", "{tmp}/p.safetensors"], "--nissa HOST:PORT"),
    (["tamiyo", "train", "--nissa", "no-port", "--out", "{tmp}/p.safetensors"], "--nissa"),
    (["tamiyo", "train", "--data", "{tmp}", "--run", "r1", "--out", "{tmp}/p.safetensors"], "--run: only with --nissa"),
])
def test_bad_input_is_a_usage_error(tmp_path, capsys, argv, needle) -> None:
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert needle in capsys.readouterr().err


def test_train_from_a_directory(tmp_path, capsys) -> None:
    from esper.tamiyo.simic.dataset import write_episode

    write_episode(tmp_path / "data", synthetic_episode(decisions=20))
    out = tmp_path / "p.safetensors"
    assert main(["tamiyo", "train", "--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "2",
                 "--version", "gnn@test-1"]) == 0
    assert "gnn@test-1" in capsys.readouterr().out
    assert out.is_file()
    # Episodes of the slowdown rule: the growth-signal feature reads that rule.
    assert main(["tamiyo", "train", "--data", str(tmp_path / "data"), "--out", str(out), "--epochs", "2",
                 "--growth-rule", "slowdown"]) == 0


@pytest.mark.parametrize("argv", [
    ["tamiyo", "collect", "--episodes", "2", "--out", "d", "--lr-schedule", "linear"],
    ["tamiyo", "evaluate", "--policy", "p.safetensors", "--lr-schedule", ""],
    ["tamiyo", "collect", "--episodes", "2", "--out", "d", "--growth-rule", "schedule"],
    ["tamiyo", "train", "--data", "d", "--out", "p.safetensors", "--growth-rule", "slow"],
    ["tamiyo", "collect", "--episodes", "2", "--out", "d", "--epoch-repeats", "two"],
])
def test_an_unknown_schedule_or_rule_is_refused(capsys, argv) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert argv[-2] in capsys.readouterr().err


def test_the_cli_schedules_match_the_episodes() -> None:
    from esper.cli import tamiyo as cli
    from esper.tamiyo.simic import episodes

    assert cli.LR_SCHEDULES == episodes.LR_SCHEDULES
    assert cli.GROWTH_RULES == episodes.GROWTH_RULES
