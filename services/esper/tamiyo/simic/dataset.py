"""Simic's training set: episodes of recorded runs, and the transitions derived from them.

An episode is what one run told the world, in Leyline messages:
- the `SessionOpen` (run id, model graph with its seed slots, capabilities, budget),
- the kernels the run could germinate (`KernelCandidate`s, so the safety mask can be rebuilt),
- its `TelemetryEvent`s in order: training snapshots, decisions, acks, field reports, seed
  transitions: exactly what travels on Oona and what Nissa stores.

On disk a dataset is a directory of `*.episode` files (see `records` for the framing; no
pickle). Transitions are derived on load, so a change of the reward needs no re-collection:

    state      = the snapshot a decision was made on (+ graph and seed states, + val-loss history)
    action     = the AdaptationDecision, with its DecisionAck
    reward     = `reward.reward_terms` between this decision's snapshot and the next one's
    next state = the snapshot the next decision was made on (None after the last one)
    done       = True for the run's last decision
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from esper.leyline.v1.control_pb2 import AdaptationDecision, DecisionAck
from esper.leyline.v1.signals_pb2 import TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import SessionOpen
from esper.leyline.v1.telemetry_pb2 import FieldReport, TelemetryEvent
from esper.leyline.v1.urza_pb2 import KernelCandidate, SearchKernelsResponse
from esper.policy.candidates import StaticCandidateProvider
from esper.policy.context import PolicyContext, RunHistory
from esper.tamiyo.simic.records import (
    KIND_CANDIDATES,
    KIND_EVENT,
    KIND_OPEN,
    ReadProblems,
    read_records,
    write_records,
)
from esper.tamiyo.simic.reward import RewardConfig, RewardTerms, reward_terms

EPISODE_SUFFIX = ".episode"
# Payload kinds of TelemetryEvent that make up an episode; the rest (alerts, heartbeats,
# compile and catalogue events) are not about the run's decisions and are ignored.
EPISODE_EVENT_KINDS = frozenset({"snapshot", "decision", "ack", "field_report", "seed_transition"})


class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing, empty), with the reason."""


@dataclass
class Episode:
    open: SessionOpen
    candidates: list[KernelCandidate] = field(default_factory=list)
    events: list[TelemetryEvent] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.open.run_id

    def of_kind(self, kind: str) -> list:
        return [getattr(e, kind) for e in self.events if e.WhichOneof("payload") == kind]


@dataclass(frozen=True)
class State:
    """What a policy saw when it decided."""

    snapshot: TrainingSnapshot
    val_losses: tuple[float, ...]  # the run's epoch-end validation losses up to then
    last_epoch: int
    start_loss: float = math.nan  # RunHistory.start_loss as of then
    first_epoch_pace: float = math.nan  # RunHistory.first_epoch_pace as of then


@dataclass(frozen=True)
class Transition:
    episode: Episode
    state: State
    decision: AdaptationDecision
    ack: DecisionAck | None
    terms: RewardTerms
    next_state: State | None
    done: bool

    @property
    def reward(self) -> float:
        return self.terms.total

    def context(self, state: State | None = None) -> PolicyContext:
        """The PolicyContext of `state` (default: this transition's), as a policy would build it."""
        s = state or self.state
        ep = self.episode
        return PolicyContext.build(
            s.snapshot, ep.open.graph, capabilities=ep.open.capabilities, budget=ep.open.budget,
            history=RunHistory(list(s.val_losses), s.last_epoch, s.start_loss, s.first_epoch_pace),
            candidates=StaticCandidateProvider(ep.candidates), run_id=ep.run_id,
        )


@dataclass
class Dataset:
    episodes: list[Episode]
    problems: ReadProblems = field(default_factory=ReadProblems)
    # Decisions with no snapshot before them (nothing to learn from), per load.
    orphan_decisions: int = 0

    def transitions(self, reward: RewardConfig | None = None) -> list[Transition]:
        config = reward or RewardConfig()
        out: list[Transition] = []
        for ep in self.episodes:
            found, orphans = episode_transitions(ep, config)
            out.extend(found)
            self.orphan_decisions += orphans
        return out

    def summary(self) -> str:
        events = sum(len(e.events) for e in self.episodes)
        text = f"{len(self.episodes)} episodes, {events} events"
        if self.problems.count:
            text += f"; {self.problems.count} bad records skipped"
        return text


# -- transitions ---------------------------------------------------------------------------


def _host_params(episode: Episode, first: TrainingSnapshot | None) -> int:
    if first is not None and first.resources.total_params:
        return int(first.resources.total_params - first.resources.seed_params)
    return sum(int(n.params) for n in episode.open.graph.nodes)


def episode_transitions(episode: Episode, config: RewardConfig) -> tuple[list[Transition], int]:
    """The episode's transitions, and how many decisions came before any snapshot."""
    history = RunHistory()
    latest: State | None = None
    steps: list[tuple[State, AdaptationDecision, list[FieldReport]]] = []
    acks: dict[str, DecisionAck] = {}
    orphans = 0
    first: TrainingSnapshot | None = None
    for event in episode.events:
        kind = event.WhichOneof("payload")
        if kind == "snapshot":
            snap = event.snapshot
            first = first or snap
            history.record(snap)
            latest = State(snap, tuple(history.val_losses), history.last_epoch, history.start_loss,
                           history.first_epoch_pace)
        elif kind == "decision":
            if latest is None:
                orphans += 1
            else:
                steps.append((latest, event.decision, []))
        elif kind == "ack":
            acks.setdefault(event.ack.decision_id, event.ack)
        elif kind == "field_report" and steps:
            steps[-1][2].append(event.field_report)
    host = _host_params(episode, first)
    out = []
    for i, (state, decision, reports) in enumerate(steps):
        nxt = steps[i + 1][0] if i + 1 < len(steps) else None
        ack = acks.get(decision.decision_id)
        terms = reward_terms(state.snapshot, nxt.snapshot if nxt else None, decision, ack, reports, host, config)
        out.append(Transition(episode, state, decision, ack, terms, nxt, nxt is None))
    return out, orphans


# -- directory of episode files ----------------------------------------------------------


def episode_records(episode: Episode) -> list[tuple[int, object]]:
    records: list[tuple[int, object]] = [(KIND_OPEN, episode.open)]
    records.append((KIND_CANDIDATES, SearchKernelsResponse(candidates=episode.candidates)))
    records.extend((KIND_EVENT, e) for e in episode.events if e.WhichOneof("payload") in EPISODE_EVENT_KINDS)
    return records


def write_episode(directory: str | Path, episode: Episode) -> Path:
    """Write one episode as `<run id>.episode` in `directory` (created if needed)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if not episode.run_id or "/" in episode.run_id or episode.run_id.startswith("."):
        raise ValueError(f"episode run id {episode.run_id!r} cannot name a file")
    path = root / f"{episode.run_id}{EPISODE_SUFFIX}"
    write_records(path, episode_records(episode))  # type: ignore[arg-type]
    return path


def read_episode(path: Path, problems: ReadProblems) -> Episode | None:
    """One episode file; None (with a counted problem) when it has no valid open record."""
    episode: Episode | None = None
    for kind, message in read_records(path, problems):
        if kind == KIND_OPEN:
            if episode is not None:
                problems.add(path.name, "a second SessionOpen record; ignored")
                continue
            episode = Episode(open=message)  # type: ignore[arg-type]
        elif episode is None:
            problems.add(path.name, "record before the SessionOpen record; skipped")
        elif kind == KIND_CANDIDATES:
            episode.candidates.extend(message.candidates)  # type: ignore[attr-defined]
        elif kind == KIND_EVENT:
            _add_event(episode, message, path.name, problems)  # type: ignore[arg-type]
    if episode is None:
        problems.add(path.name, "no SessionOpen record; the episode is unusable and skipped")
        return None
    if not episode.open.graph.slots:
        problems.add(path.name, "the model graph has no seed slots; the episode is skipped")
        return None
    return episode


def _add_event(episode: Episode, event: TelemetryEvent, where: str, problems: ReadProblems) -> None:
    kind = event.WhichOneof("payload")
    if kind not in EPISODE_EVENT_KINDS:
        return
    if event.run_id and event.run_id != episode.run_id:
        problems.add(where, f"event {event.event_id} belongs to run {event.run_id!r}, not {episode.run_id!r}")
        return
    episode.events.append(event)


def load_dataset(directory: str | Path, *, strict: bool = False) -> Dataset:
    """Every `*.episode` file in `directory` (sorted, so loading is deterministic). Bad records
    are counted and skipped; `strict` turns any bad record into a DatasetError."""
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"no dataset directory at {root}")
    problems = ReadProblems()
    episodes = [e for e in (read_episode(p, problems) for p in sorted(root.glob(f"*{EPISODE_SUFFIX}"))) if e]
    if strict and problems.count:
        raise DatasetError(f"{problems.count} bad records in {root}: " + "; ".join(problems.messages[:3]))
    if not episodes:
        detail = f" ({'; '.join(problems.messages[:3])})" if problems.messages else ""
        raise DatasetError(f"no usable episodes in {root}{detail}")
    return Dataset(episodes, problems)


def episodes_from_events(
    events: Iterable[TelemetryEvent], context: SessionOpen, candidates: list[KernelCandidate],
) -> list[Episode]:
    """Group events from Oona or Nissa by run id into episodes of one model's runs. Telemetry
    carries no model graph, so `context` (the graph, capabilities and budget the runs used)
    and `candidates` must be given; each episode gets a copy with its own run id."""
    by_run: dict[str, Episode] = {}
    for event in events:
        if event.WhichOneof("payload") not in EPISODE_EVENT_KINDS or not event.run_id:
            continue
        episode = by_run.get(event.run_id)
        if episode is None:
            opened = SessionOpen()
            opened.CopyFrom(context)
            opened.run_id = event.run_id
            episode = by_run[event.run_id] = Episode(opened, list(candidates))
        episode.events.append(event)
    for episode in by_run.values():
        episode.events.sort(key=event_order)
    return [by_run[k] for k in sorted(by_run)]


# Within one step: the snapshot, then the decision made on it, its ack, then what the ack did.
_KIND_RANK = {"snapshot": 0, "decision": 1, "ack": 2, "seed_transition": 3, "field_report": 4}


def event_order(event: TelemetryEvent) -> tuple[int, int, int, int]:
    """Run order of events gathered from several topics or tables: by training step, then
    snapshot < decision < ack < transition < report, then wall-clock time."""
    kind = event.WhichOneof("payload") or ""
    body = getattr(event, kind) if kind else None
    step = {
        "snapshot": lambda b: b.step, "decision": lambda b: b.issued_at_step, "ack": lambda b: b.step,
        "seed_transition": lambda b: b.step, "field_report": lambda b: b.ended_at_step,
    }.get(kind, lambda b: 0)(body)
    return int(step), _KIND_RANK.get(kind, 9), event.time.seconds, event.time.nanos
