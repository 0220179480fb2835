"""The Trainer's progress output: a bar on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import io

import torch

from esper.tolaria.progress import EpochProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epoch(stream, enabled: bool = True, steps: int = 50) -> None:
    bar = EpochProgress(steps, epoch=2, epochs=5, enabled=enabled, stream=stream)
    for step in range(steps):
        bar.update(torch.tensor(1.0 / (step + 1)), correct=step, seen=2 * (step + 1),
                   live_seeds=1)
    bar.finish({"val_loss": 0.25, "val_accuracy": 0.875}, live_seeds=1)


def test_a_file_gets_one_line_per_epoch() -> None:
    out = io.StringIO()
    _epoch(out)
    _epoch(out)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 3/5: 50 steps in ")
    assert "loss 0.0200" in lines[0] and "acc 49.0%" in lines[0]
    assert "val_loss 0.2500" in lines[0] and "val_acc 87.5%" in lines[0]
    assert lines[0].endswith("seeds 1")


def test_a_terminal_gets_a_bar() -> None:
    out = Terminal()
    _epoch(out)
    text = out.getvalue()
    assert "\r" in text and "epoch 3/5" in text and "val_acc=87.5%" in text


def test_disabled_prints_nothing() -> None:
    for stream in (io.StringIO(), Terminal()):
        _epoch(stream, enabled=False)
        assert stream.getvalue() == ""
