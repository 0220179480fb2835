"""Simic's dataset: episode files round trip, bad records are counted and skipped, transitions
are derived in run order, and Oona dumps / event streams give the same episodes."""

from __future__ import annotations

import io
import itertools
import random
import zlib

import pytest

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import ResourceState, TrainingMetrics, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget, SessionOpen
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.oona.envelope import new_event
from esper.policy.candidates import StaticCandidateProvider
from esper.policy.context import PolicyContext, RunHistory
from esper.tamiyo.simic.dataset import (
    DatasetError,
    Episode,
    episodes_from_events,
    load_dataset,
    write_episode,
)
from esper.tamiyo.simic.episodes import EPISODE_HEURISTIC, ExploringHeuristic
from esper.tamiyo.simic.records import MAGIC, ReadProblems, read_records
from esper.tamiyo.simic.sources import read_oona_dump
from tests.unit.test_tamiyo_support import candidate, graph, seed

S = SeedStage
STEPS_PER_EPOCH = 20


def _apply(decision: AdaptationDecision, seeds: dict, step: int, run_id: str, accuracy: float) -> list:
    """A tiny stand-in for the runtime (pure logic for unit tests): the decision's effect on the
    seed states, its ack and the field report of a seed whose life ended."""
    kind = decision.WhichOneof("action")
    events = [new_event(source="tolaria", run_id=run_id, ack=DecisionAck(
        decision_id=decision.decision_id, run_id=run_id, status=AckStatus.ACK_STATUS_APPLIED, step=step))]
    if kind in (None, "wait"):
        return events
    slot = getattr(decision, kind).slot_id
    now = seeds.get(slot)
    if kind == "germinate":
        seeds[slot] = seed(slot, S.SEED_STAGE_GERMINATED, params=1000, germinated_at=step)
    elif kind == "advance":
        seeds[slot] = seed(slot, decision.advance.target_stage, params=1000, alpha=1.0, steps=0)
    else:
        final = S.SEED_STAGE_CULLED if kind == "cull" else S.SEED_STAGE_FOSSILIZED
        seeds[slot] = seed(slot, final, params=1000)
        events.append(new_event(source="tolaria", run_id=run_id, field_report=FieldReport(
            run_id=run_id, seed_id=now.seed_id, slot_id=slot, final_stage=final, ended_at_step=step,
            val_accuracy_after=accuracy, params_added=1000 if kind == "fossilize" else 0)))
        if kind == "cull":
            seeds.pop(slot)
    return events


def synthetic_episode(run_id: str = "run-a", decisions: int = 30, seed_value: int = 0,
                      epsilon: float = 0.3) -> Episode:
    """An episode of real Leyline messages whose decisions come from the (exploring) heuristic
    on hand-made snapshots: a validation loss that plateaus, seeds that follow the decisions."""
    rng = random.Random(seed_value)
    g = graph(3)
    cands = [candidate("BP-MLP-GELU", params=1000), candidate("BP-LORA-R8", params=200)]
    opened = SessionOpen(run_id=run_id, graph=g, capabilities=Capabilities(max_live_seeds=1),
                         budget=ResourceBudget(max_added_params=5000))
    policy = ExploringHeuristic(EPISODE_HEURISTIC, epsilon, rng)
    history, seeds, events = RunHistory(), {}, []
    for i in range(decisions):
        step = 5 * (i + 1)
        epoch = step // STEPS_PER_EPOCH
        for s in seeds.values():
            s.steps_in_stage += 5
        accuracy = min(0.9, 0.5 + 0.1 * epoch) + rng.uniform(0, 0.01)
        snap = TrainingSnapshot(
            run_id=run_id, step=step, epoch=epoch, sequence=i + 1, epoch_end=step % STEPS_PER_EPOCH == 0,
            metrics=TrainingMetrics(train_loss=1.0 / (1 + epoch), val_loss=max(0.3, 1.0 - 0.2 * epoch),
                                    val_accuracy=accuracy, plateau_epochs=max(0, epoch - 3)),
            seeds=list(seeds.values()),
            resources=ResourceState(total_params=10_000 + 1000 * len(seeds), seed_params=1000 * len(seeds),
                                    step_time_ms=2.0),
        )
        events.append(new_event(source="tolaria", run_id=run_id, snapshot=snap))
        history.record(snap)
        ctx = PolicyContext.build(snap, g, capabilities=opened.capabilities, budget=opened.budget,
                                  history=history, candidates=StaticCandidateProvider(cands), run_id=run_id)
        decision = policy.decide(ctx)
        events.append(new_event(source="tamiyo", run_id=run_id, decision=decision))
        events.extend(_apply(decision, seeds, step, run_id, accuracy))
    return Episode(opened, cands, events)


def _kinds(episode: Episode) -> list[str]:
    return [e.WhichOneof("payload") for e in episode.events]


def test_round_trip(tmp_path) -> None:
    episode = synthetic_episode()
    write_episode(tmp_path, episode)
    loaded = load_dataset(tmp_path)
    assert loaded.problems.count == 0
    (back,) = loaded.episodes
    assert back.open == episode.open
    assert back.candidates == episode.candidates
    assert [e.SerializeToString() for e in back.events] == [e.SerializeToString() for e in episode.events]


def test_transitions_chain_states_and_end_done(tmp_path) -> None:
    episode = synthetic_episode(decisions=12)
    transitions = load_dataset(_write(tmp_path, episode)).transitions()
    assert len(transitions) == 12
    assert [t.done for t in transitions] == [False] * 11 + [True]
    for a, b in itertools.pairwise(transitions):
        assert a.next_state is b.state
        assert a.ack is not None and a.ack.decision_id == a.decision.decision_id
    assert transitions[-1].next_state is None
    assert transitions[0].context().candidates.candidates(episode.open.graph.slots[0], ResourceBudget())


def _write(tmp_path, *episodes: Episode):
    for ep in episodes:
        write_episode(tmp_path, ep)
    return tmp_path


def _record_offsets(data: bytes) -> list[int]:
    """Byte offsets of each record's payload start (kind byte + 1- or 2-byte varint)."""
    pos, out = len(MAGIC), []
    while pos < len(data):
        length, shift, i = 0, 0, pos + 1
        while True:
            length |= (data[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not data[i - 1] & 0x80:
                break
        out.append(i)
        pos = i + length + 4
    return out


def test_corrupt_record_is_counted_and_skipped(tmp_path) -> None:
    episode = synthetic_episode(decisions=8)
    path = write_episode(tmp_path, episode)
    data = bytearray(path.read_bytes())
    offsets = _record_offsets(bytes(data))
    data[offsets[5] + 3] ^= 0xFF  # inside the payload of the 4th event
    path.write_bytes(bytes(data))
    loaded = load_dataset(tmp_path)
    assert loaded.problems.count == 1
    assert "CRC-32 mismatch" in loaded.problems.messages[0]
    assert len(loaded.episodes[0].events) == len(episode.events) - 1
    with pytest.raises(DatasetError, match="1 bad records"):
        load_dataset(tmp_path, strict=True)


def test_truncated_file_keeps_what_came_before(tmp_path) -> None:
    episode = synthetic_episode(decisions=8)
    path = write_episode(tmp_path, episode)
    data = path.read_bytes()
    offsets = _record_offsets(data)
    path.write_bytes(data[: offsets[6] + 2])  # cut inside the 5th event
    loaded = load_dataset(tmp_path)
    assert loaded.problems.count == 1
    assert "past the end of the file" in loaded.problems.messages[0]
    assert len(loaded.episodes[0].events) == 4


def test_garbage_files_are_skipped_with_a_message(tmp_path) -> None:
    _write(tmp_path, synthetic_episode("run-ok", decisions=4))
    (tmp_path / "junk.episode").write_bytes(b"\x00garbage" * 10)
    unknown_kind = b"\x07\x02ab" + zlib.crc32(b"ab").to_bytes(4, "big")
    (tmp_path / "nomagic.episode").write_bytes(MAGIC + unknown_kind)  # no open record either
    loaded = load_dataset(tmp_path)
    assert [e.run_id for e in loaded.episodes] == ["run-ok"]
    text = " | ".join(loaded.problems.messages)
    assert "bad magic" in text and "unknown record kind 7" in text and "no SessionOpen" in text


def test_an_empty_or_missing_dataset_is_refused(tmp_path) -> None:
    with pytest.raises(DatasetError, match="no usable episodes"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no dataset directory"):
        load_dataset(tmp_path / "missing")


def test_oversized_length_is_not_allocated(tmp_path) -> None:
    path = tmp_path / "big.episode"
    path.write_bytes(MAGIC + b"\x03\xff\xff\xff\xff\x07")  # claims ~2 GB
    problems = ReadProblems()
    assert list(read_records(path, problems)) == []
    assert problems.count == 1


def test_events_from_the_bus_give_the_same_transitions(tmp_path) -> None:
    episode = synthetic_episode(decisions=10)
    shuffled = list(episode.events)
    random.Random(1).shuffle(shuffled)  # topics interleave arbitrarily
    context = SessionOpen()
    context.CopyFrom(episode.open)
    context.run_id = ""
    (rebuilt,) = episodes_from_events(shuffled, context, episode.candidates)
    assert rebuilt.run_id == episode.run_id
    want = [(t.decision.decision_id, round(t.reward, 9)) for t in load_dataset(_write(tmp_path, episode)).transitions()]
    from esper.tamiyo.simic.dataset import Dataset

    got = [(t.decision.decision_id, round(t.reward, 9)) for t in Dataset([rebuilt]).transitions()]
    assert got == want


def test_oona_dump_in_kcat_framing_with_a_bad_value(tmp_path) -> None:
    episode = synthetic_episode(decisions=6)
    buf = io.BytesIO()
    for event in episode.events:
        value = event.SerializeToString()
        buf.write(f"{len(value)}:".encode() + value + b"\n")
    buf.write(b"5:hello\n")
    dump = tmp_path / "training.kcat"
    dump.write_bytes(buf.getvalue())
    context = SessionOpen()
    context.CopyFrom(episode.open)
    data = read_oona_dump([dump], context, episode.candidates)
    assert data.problems.count == 1 and "not a TelemetryEvent" in data.problems.messages[0]
    assert len(data.transitions()) == 6
