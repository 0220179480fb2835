"""The seeds' first-epoch signal (HeuristicConfig.seed_first_epoch_pace): RunHistory measures
how fast the smoothed training loss still fell at the first epoch's end, and the heuristic
grows seeds after that epoch when its fast learning was over, unless a residual stream with
room is still to widen; that stream widens on it too with stream_first_epoch_pace (on in
the local defaults, off in the server's)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from esper.leyline.v1.signals_pb2 import ResidualStreamState
from esper.policy import HeuristicConfig, HeuristicPolicy, RunHistory
from esper.policy.context import MAX_FIRST_EPOCH_POINTS
from esper.policy.plateau import first_epoch_pace
from esper.tolaria.policy.local import LOCAL_HEURISTIC, LocalPolicy
from tests.unit.test_policy_stream import SERVER_STREAM
from tests.unit.test_tamiyo_support import context, loss_snapshot

NAN = float("nan")


def test_the_pace_is_the_second_halfs_gain_over_the_first_halfs() -> None:
    points = [(100, 1.5), (200, 0.6), (300, 0.5)]
    assert first_epoch_pace(2.3, points, 400, 0.45) == pytest.approx(0.15 / 1.7)
    # The point nearest the middle is the one used, wherever the others lie.
    assert first_epoch_pace(2.3, [(180, 0.7), (390, 0.46)], 400, 0.45) == pytest.approx(0.25 / 1.6)
    # Still learning as fast in the second half: a pace of 1 or more never fires.
    assert first_epoch_pace(2.0, [(200, 1.5)], 400, 0.9) == pytest.approx(1.2)
    assert first_epoch_pace(2.0, [(200, 1.5)], 400, 1.6) == 0.0  # the loss rose: no gain


@pytest.mark.parametrize("start, points, end_step, end_loss", [
    (NAN, [(200, 0.6)], 400, 0.5),               # start loss unknown (joined mid-run)
    (2.3, [], 400, 0.5),                         # no point within the epoch
    (2.3, [(350, 0.6)], 400, 0.5),               # nearest point 150 steps off the middle
    (2.3, [(200, NAN), (20, 2.0)], 400, 0.5),    # the middle's loss not finite
    (2.3, [(200, 0.6)], 400, NAN),               # the end's loss not finite
    (2.3, [(200, 2.5)], 400, 0.5),               # the first half gained nothing
    (2.3, [(200, 0.6)], 0, 0.5),                 # no steps
    (2.3, [(400, 0.6), (0, 2.3)], 400, 0.5),     # points outside the epoch are not its middle
])
def test_an_unknown_pace_is_nan(start, points, end_step, end_loss) -> None:
    assert math.isnan(first_epoch_pace(start, points, end_step, end_loss))


def _first_epoch(history: RunHistory, losses: list[float], every: int = 20) -> None:
    """Feed a first epoch's snapshots (epoch 0, one every `every` steps) and its end (the
    epochs finished: 1, as Tolaria numbers it)."""
    for i, loss in enumerate(losses[:-1], start=1):
        history.record(loss_snapshot(i * every, 0, loss))
    history.record(loss_snapshot(len(losses) * every, 1, losses[-1], epoch_end=True, val=losses[-1]))


def test_the_history_measures_the_first_epoch_at_its_end() -> None:
    h = RunHistory()
    _first_epoch(h, [2.0, 1.5, 1.0, 0.9, 0.85, 0.8])  # middle: step 60, loss 1.0
    assert h.start_loss == 2.0 and h.val_losses == [0.8]
    assert h.first_epoch_pace == pytest.approx(0.2 / 1.0)
    assert h.first_epoch_points == []
    h.record(loss_snapshot(200, 1, 0.1))  # later epochs change nothing
    h.record(loss_snapshot(240, 2, 0.1, epoch_end=True, val=0.7))
    assert h.first_epoch_pace == pytest.approx(0.2)


def test_a_policy_that_joins_later_never_knows_the_first_epochs_pace() -> None:
    h = RunHistory()
    h.record(loss_snapshot(500, 3, 1.2))
    h.record(loss_snapshot(520, 4, 1.1, epoch_end=True, val=1.0))
    assert math.isnan(h.first_epoch_pace) and h.first_epoch_points == []


def test_a_long_first_epoch_keeps_a_bounded_list_and_finds_its_middle() -> None:
    h = RunHistory()
    n = 3 * MAX_FIRST_EPOCH_POINTS
    _first_epoch(h, [2.0 - i / n for i in range(n)], every=1)
    assert h.first_epoch_pace == pytest.approx(1.0, abs=0.02)  # a straight line: equal halves
    h = RunHistory()
    for i in range(1, n):
        h.record(loss_snapshot(i, 0, 1.0))
    assert len(h.first_epoch_points) <= MAX_FIRST_EPOCH_POINTS


CONFIG = LOCAL_HEURISTIC


def test_the_signal_is_on_for_in_process_runs_and_opt_in_for_tamiyos_server() -> None:
    """Measured on the example tasks' short runs (benchmarks/morphogenesis.py); Tamiyo's
    server defaults suit long runs, where a first epoch is a small part of the run."""
    assert LOCAL_HEURISTIC.seed_first_epoch_pace is True
    assert HeuristicConfig().seed_first_epoch_pace is False


def _after_first_epoch(pace: float, config=CONFIG, stream: ResidualStreamState | None = None) -> str:
    ctx = context(val_history=[0.5])  # one validation: no other signal can fire yet
    ctx.history.first_epoch_pace = pace
    if stream is not None:
        ctx.snapshot.stream.CopyFrom(stream)
    d = HeuristicPolicy(config).decide(ctx)
    return f"{d.WhichOneof('action')}: {d.rationale}"


def test_seeds_grow_after_the_first_epoch_when_its_fast_learning_was_over() -> None:
    said = _after_first_epoch(0.1)
    assert said.startswith("germinate") and "within the first epoch" in said, said
    assert "0.10x" in said
    assert _after_first_epoch(0.6).startswith("wait")  # still learning fast
    assert _after_first_epoch(NAN).startswith("wait")  # unknown
    switched_off = dataclasses.replace(LOCAL_HEURISTIC, seed_first_epoch_pace=False)
    assert _after_first_epoch(0.1, switched_off).startswith("wait")
    no_slowdown = dataclasses.replace(CONFIG, slowdown_ratio=0.0)
    assert _after_first_epoch(0.1, no_slowdown).startswith("wait")


def test_a_stream_with_room_widens_first() -> None:
    """Seeds wait for a stream with room; the local defaults widen it right after the first
    epoch, by an eighth of its width."""
    room = ResidualStreamState(width=32, declared_width=32, max_width=48, feature_multiple=4,
                               params_per_feature=100)
    said = _after_first_epoch(0.1, stream=room)
    assert said.startswith("widen_stream") and "within the first epoch" in said, said
    assert "32 -> 36" in said
    assert _after_first_epoch(0.6, stream=room).startswith("wait")  # still fast
    assert _after_first_epoch(NAN, stream=room).startswith("wait")  # unknown
    full = ResidualStreamState(width=48, declared_width=48, max_width=48, feature_multiple=4,
                               params_per_feature=100)  # no room left: seeds are free to grow
    assert _after_first_epoch(0.1, stream=full).startswith("germinate")


def test_the_stream_waits_out_the_first_epoch_under_the_server_defaults() -> None:
    room = ResidualStreamState(width=32, declared_width=32, max_width=48, feature_multiple=4,
                               params_per_feature=100)
    assert _after_first_epoch(0.1, SERVER_STREAM, stream=room).startswith("wait")
    opted_in = dataclasses.replace(SERVER_STREAM, stream_first_epoch_pace=True)
    said = _after_first_epoch(0.1, opted_in, stream=room)
    assert said.startswith("widen_stream") and "32 -> 40" in said, said
    assert HeuristicConfig().stream_first_epoch_pace is False
    assert LOCAL_HEURISTIC.stream_first_epoch_pace is True


def test_a_local_policy_checkpoint_carries_the_first_epochs_pace() -> None:
    source = LocalPolicy()
    _first_epoch(source.history, [2.0, 1.5, 1.0, 0.9, 0.85, 0.8])
    state = source.state_dict()
    resumed = LocalPolicy()
    resumed.load_state_dict(state)
    assert resumed.history.first_epoch_pace == pytest.approx(0.2)
    older = {k: v for k, v in state.items() if k != "first_epoch_pace"}  # from before it
    resumed.load_state_dict(older)
    assert math.isnan(resumed.history.first_epoch_pace)
