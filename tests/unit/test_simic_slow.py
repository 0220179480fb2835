"""End to end on real episodes: collect two tiny episodes of the digits task, train on them,
load the artifact into GnnPolicy and let it decide on a recorded state."""

from __future__ import annotations

import dataclasses

import pytest

from esper.policy.heuristic import HeuristicPolicy
from esper.policy.safety import violation
from esper.tamiyo.policies.gnn import GnnPolicy
from esper.tamiyo.simic.dataset import load_dataset
from esper.tamiyo.simic.episodes import EPISODE_HEURISTIC, EpisodeConfig, collect
from esper.tamiyo.simic.train import SimicConfig, train_policy


@pytest.mark.slow
def test_collect_two_real_episodes_and_train(tmp_path) -> None:
    data = tmp_path / "episodes"
    results = collect(str(data), 2, seed=7, config=EpisodeConfig(epochs=3), epsilon=(0.3, 0.5))
    dataset = load_dataset(data)
    assert len(dataset.episodes) == 2 and dataset.problems.count == 0
    kinds = {e.WhichOneof("payload") for e in dataset.episodes[0].events}
    assert {"snapshot", "decision", "ack"} <= kinds
    decisions = sum(len(r.episode.of_kind("decision")) for r in results)
    transitions = dataset.transitions()
    assert len(transitions) == decisions
    result = train_policy(dataset, dataclasses.replace(SimicConfig(), epochs=2))
    assert result.samples == decisions - result.tensors.dropped_illegal - result.tensors.dropped_unexpressible
    assert result.samples > 0.9 * decisions
    path = tmp_path / "policy.safetensors"
    result.save(path)
    policy = GnnPolicy.load(str(path), heuristic=HeuristicPolicy(EPISODE_HEURISTIC))
    ctx = transitions[-1].context()
    assert violation(policy.decide(ctx), ctx, 0.5, 1) is None


def test_a_cosine_episode_decays_the_rate_to_zero() -> None:
    from esper.tamiyo.simic.episodes import run_episode

    with pytest.raises(ValueError, match="lr_schedule"):
        EpisodeConfig(lr_schedule="linear")
    config = EpisodeConfig(epochs=2, lr_schedule="cosine")
    result = run_episode(HeuristicPolicy(EPISODE_HEURISTIC), seed=3, config=config)
    rates = [e.snapshot.metrics.learning_rate for e in result.episode.events
             if e.WhichOneof("payload") == "snapshot"]
    assert rates[0] < config.learning_rate and rates[-1] < 0.01 * config.learning_rate
    assert rates == sorted(rates, reverse=True)


def test_slowdown_episodes_record_a_heuristic_that_grows_on_diminishing_returns() -> None:
    import random

    from esper.tamiyo.simic.episodes import SLOWDOWN_RATIOS, SLOWDOWN_WINDOW, sample_heuristic

    plateau = sample_heuristic(random.Random(5))
    slowdown = sample_heuristic(random.Random(5), growth_rule="slowdown")
    assert plateau.slowdown_ratio == 0.0  # plateau episodes draw what they always drew
    assert slowdown.slowdown_ratio in SLOWDOWN_RATIOS and slowdown.slowdown_window == SLOWDOWN_WINDOW
    assert dataclasses.replace(slowdown, slowdown_ratio=0.0, slowdown_window=0) == plateau
    with pytest.raises(ValueError, match="growth_rule"):
        EpisodeConfig(growth_rule="schedule")


def test_first_epoch_episodes_record_the_local_heuristics_rules() -> None:
    import random

    from esper.tamiyo.simic.episodes import episode_heuristic, sample_heuristic

    slowdown = sample_heuristic(random.Random(5), growth_rule="slowdown")
    first_epoch = sample_heuristic(random.Random(5), growth_rule="first-epoch")
    assert not slowdown.seed_first_epoch_pace and first_epoch.seed_first_epoch_pace
    assert dataclasses.replace(first_epoch, seed_first_epoch_pace=False) == slowdown
    judged = episode_heuristic("first-epoch")
    assert judged.seed_first_epoch_pace and judged.slowdown_ratio == 0.5
    assert not episode_heuristic("slowdown").seed_first_epoch_pace


def test_an_epoch_of_repeats_passes_over_the_data_that_many_times() -> None:
    from esper.tamiyo.simic.episodes import RepeatedLoader

    loader = RepeatedLoader([1, 2, 3], 3)
    assert len(loader) == 9 and list(loader) == [1, 2, 3] * 3
    assert list(RepeatedLoader([1, 2], 1)) == [1, 2]
    with pytest.raises(ValueError, match="epoch_repeats"):
        EpisodeConfig(epoch_repeats=0)


@pytest.mark.slow
def test_with_long_epochs_the_first_epoch_rule_grows_seeds_right_after_the_first_epoch() -> None:
    """Eight passes over digits per epoch: the first epoch holds the fast learning, so the
    first-epoch rule fires at its end and the heuristic germinates then (with one pass, the
    first epoch ends before the fast learning does and the rule stays silent)."""
    from esper.tamiyo.simic.episodes import episode_heuristic, run_episode

    config = EpisodeConfig(epochs=2, epoch_repeats=8, lr_schedule="cosine", growth_rule="first-epoch")
    result = run_episode(HeuristicPolicy(episode_heuristic("first-epoch")), seed=1_000_002, config=config)
    germinations = [e.decision for e in result.episode.events if e.WhichOneof("payload") == "decision"
                    and e.decision.WhichOneof("action") == "germinate"]
    assert germinations and "first epoch" in germinations[0].rationale


def test_every_episode_snapshot_carries_the_health_a_deployed_window_does() -> None:
    """Each 5-step snapshot of an episode has one step's activation statistics and a
    gradient norm on every monitored layer, as a deployed run's 20-step window has; at
    Tolaria's own sampling rates most of an episode's windows would read 0 there."""
    from esper.tamiyo.simic.episodes import run_episode

    for name in ("snapshot_every", "health_activation_every", "health_sample_every"):
        with pytest.raises(ValueError, match=name):
            EpisodeConfig(**{name: 0})
    result = run_episode(HeuristicPolicy(EPISODE_HEURISTIC), seed=4, config=EpisodeConfig(epochs=1))
    snapshots = [e.snapshot for e in result.episode.events if e.WhichOneof("payload") == "snapshot"]
    periodic = [s for s in snapshots if not s.epoch_end]
    assert len(periodic) >= 3
    for snapshot in periodic:
        assert snapshot.layers
        for health in snapshot.layers:
            assert health.activation_std > 0, (snapshot.step, health.layer_id)
            assert health.gradient_norm > 0, (snapshot.step, health.layer_id)
