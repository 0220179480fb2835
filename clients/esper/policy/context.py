"""What a policy sees when it decides: the run's latest snapshot, the host graph, what the
process can host and afford, the seed states, the history it needs and a candidate provider.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from esper.leyline.lifecycle import LIVE_STAGES, stack_blockers
from esper.leyline.v1.lifecycle_pb2 import SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import LayerHealth, ModelGraph, SlotInfo, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget
from esper.policy.candidates import CandidateProvider, NoCandidateProvider
from esper.policy.plateau import first_epoch_pace

# Plain ints: protobuf enum attribute lookups are slow on hot paths.
_DORMANT = int(SeedStage.SEED_STAGE_DORMANT)
_EMBARGOED = int(SeedStage.SEED_STAGE_EMBARGOED)

# Validation losses kept per run: plateau detection looks back a handful of epochs, and a
# bounded list keeps a long run's state small.
MAX_VAL_LOSS_HISTORY = 256
# First-epoch training-loss points kept to find the epoch's middle: past this many, every
# second one is dropped (a long epoch's middle is still found to within a few snapshots).
MAX_FIRST_EPOCH_POINTS = 512


def graph_digest(graph: ModelGraph) -> str:
    """The graph's SHA-256 (of its deterministic encoding): equal graphs, whoever sent them,
    share what a policy derives from them (the learned policy's encoding)."""
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


@dataclass
class RunHistory:
    """The part of a run's past the policies need: one validation loss per finished epoch."""

    val_losses: list[float] = field(default_factory=list)
    last_epoch: int = -1
    # The loss the run started from: the training loss of its first snapshot, taken in
    # epoch 0 before any validation (NaN until then, or when the policy joined mid-run).
    # Validations come only at epoch ends, so without it the first epoch's gain, the run's
    # fastest, is invisible to the pace of learning (esper.policy.plateau.pace).
    start_loss: float = math.nan
    # How fast the training loss still fell at the end of the first epoch, as a fraction of
    # its first half's gain (esper.policy.plateau.first_epoch_pace): known at the first
    # epoch's end, NaN before, when the policy saw too little of that epoch, or joined
    # later. It lets the seeds' growth signal fire after the first epoch
    # (HeuristicConfig.seed_first_epoch_pace) rather than after the second at the soonest.
    first_epoch_pace: float = math.nan
    # (state, why): the run's state (esper.policy.heuristic.eager_state) when the
    # heuristic's eager growth last found nothing to grow, and why; until the state
    # changes it does not query the candidates again (~0.1 ms a decision). Not persisted:
    # a resumed run checks once.
    eager_idle: tuple | None = field(default=None, compare=False, repr=False)
    # The first epoch's (step, training loss) points, until its end turns them into
    # first_epoch_pace. Not persisted: a policy that resumes within the first epoch sees
    # only its later half, and the pace stays unknown unless a point near the middle is seen.
    first_epoch_points: list[tuple[int, float]] = field(default_factory=list, compare=False,
                                                        repr=False)

    def record(self, snapshot: TrainingSnapshot) -> bool:
        """Fold in an epoch-end snapshot's validation loss; non-finite values and repeated
        epochs are ignored. Returns whether it was recorded."""
        self._note_start(snapshot)
        self._note_first_epoch(snapshot)
        val_loss = snapshot.metrics.val_loss
        if not snapshot.epoch_end or not math.isfinite(val_loss) or snapshot.epoch <= self.last_epoch:
            return False
        self.val_losses.append(val_loss)
        del self.val_losses[:-MAX_VAL_LOSS_HISTORY]
        self.last_epoch = snapshot.epoch
        return True

    def _note_start(self, snapshot: TrainingSnapshot) -> None:
        """Take the first snapshot's training loss as the start loss, if it is one of the
        run's first epoch (a policy that joins later never learns where the run began)."""
        loss = snapshot.metrics.train_loss
        if math.isnan(self.start_loss) and self.last_epoch < 0 and snapshot.epoch == 0 \
                and not self.val_losses and math.isfinite(loss) and loss > 0:
            self.start_loss = loss

    def _note_first_epoch(self, snapshot: TrainingSnapshot) -> None:
        """Keep the first epoch's training losses (its snapshots carry epoch 0; its end's,
        the epochs finished: 1); at its end, measure its pace from them."""
        loss = snapshot.metrics.train_loss
        if self.last_epoch >= 0 or not math.isnan(self.first_epoch_pace) or not math.isfinite(loss):
            return
        if snapshot.epoch_end:
            if self.first_epoch_points:
                self.first_epoch_pace = first_epoch_pace(self.start_loss, self.first_epoch_points,
                                                         snapshot.step, loss)
            self.first_epoch_points = []
            return
        if snapshot.epoch != 0:
            return
        self.first_epoch_points.append((snapshot.step, loss))
        if len(self.first_epoch_points) > MAX_FIRST_EPOCH_POINTS:
            del self.first_epoch_points[1::2]


def _current_shapes(graph: ModelGraph, seeds: Mapping[str, SeedState]) -> ModelGraph:
    """The graph with each slot's shape as its seed state reports it now: the graph was
    sent when the session opened, and a widened residual stream (WidenStreamAction) has
    since changed the width of the slots on it. The graph itself when nothing changed."""
    def moved(slot: SlotInfo) -> bool:
        seed = seeds.get(slot.slot_id)
        return seed is not None and seed.HasField("slot_shape") \
            and seed.slot_shape.channels != slot.shape.channels

    if not any(moved(slot) for slot in graph.slots):
        return graph
    current = ModelGraph()
    current.CopyFrom(graph)
    for slot in current.slots:
        if moved(slot):
            slot.shape.CopyFrom(seeds[slot.slot_id].slot_shape)
    return current


@dataclass
class PolicyContext:
    """Everything one decision is made from. Build it with `PolicyContext.build`."""

    run_id: str
    snapshot: TrainingSnapshot
    graph: ModelGraph
    capabilities: Capabilities
    budget: ResourceBudget
    seeds: dict[str, SeedState]
    history: RunHistory
    candidates: CandidateProvider
    # Slot ids named by seed states that the graph does not know (hostile or stale input).
    ignored_slot_ids: tuple[str, ...] = ()
    # The graph's slot ids (read once per decision: a pass over the graph costs ~10 us).
    slot_ids: frozenset[str] = frozenset()
    # `graph_digest(graph)` where the caller keeps it (Tamiyo's run: once per graph, where a
    # decision's hash of a 100-node graph cost ~20 us); "" when not known.
    graph_digest: str = ""

    @classmethod
    def build(
        cls,
        snapshot: TrainingSnapshot,
        graph: ModelGraph,
        *,
        capabilities: Capabilities | None = None,
        budget: ResourceBudget | None = None,
        seeds: Mapping[str, SeedState] | None = None,
        history: RunHistory | None = None,
        candidates: CandidateProvider | None = None,
        run_id: str | None = None,
        graph_digest: str = "",
    ) -> PolicyContext:
        """A context from a snapshot. Seeds default to the snapshot's; seeds naming slots the
        graph does not have are dropped and listed in `ignored_slot_ids`."""
        known = frozenset(s.slot_id for s in graph.slots)
        source = seeds.values() if seeds is not None else snapshot.seeds
        kept: dict[str, SeedState] = {}
        ignored: list[str] = []
        for seed in source:
            (kept.__setitem__(seed.slot_id, seed) if seed.slot_id in known else ignored.append(seed.slot_id))
        # Only a widened stream moves slot shapes: a run without one skips the pass.
        current = _current_shapes(graph, kept) if snapshot.stream.widenings else graph
        return cls(
            run_id=run_id if run_id is not None else snapshot.run_id,
            snapshot=snapshot,
            graph=current,
            capabilities=capabilities or Capabilities(),
            budget=budget or ResourceBudget(),
            seeds=kept,
            history=history or RunHistory(),
            candidates=candidates or NoCandidateProvider(),
            ignored_slot_ids=tuple(ignored),
            slot_ids=known,
            graph_digest=graph_digest if current is graph else "",
        )

    @property
    def step(self) -> int:
        return self.snapshot.step

    @property
    def slots(self) -> list[SlotInfo]:
        return list(self.graph.slots)

    def stage_of(self, slot_id: str) -> int:
        """The slot's seed stage; a slot without a reported seed is DORMANT."""
        seed = self.seeds.get(slot_id)
        return seed.stage if seed is not None else _DORMANT

    def live_seed_count(self) -> int:
        return sum(1 for s in self.seeds.values() if s.stage in LIVE_STAGES)

    def is_embargoed(self, slot_id: str) -> bool:
        """Whether the slot refuses germination now (embargo stage or embargo window)."""
        seed = self.seeds.get(slot_id)
        if seed is None:
            return False
        return seed.stage == _EMBARGOED or seed.embargo_until_step > self.step

    def stack_blocker(self, slot_id: str) -> str | None:
        """The slot below `slot_id` in its layer's stack that has not fossilized (the slot
        stays closed until it has), or None."""
        return stack_blockers(self.graph.slots, self.stage_of).get(slot_id)

    def open_slots(self) -> list[SlotInfo]:
        """Slots a seed may germinate in now: dormant, outside embargo, and not stacked on
        a slot that has not fossilized yet."""
        blocked = stack_blockers(self.graph.slots, self.stage_of)
        return [s for s in self.graph.slots
                if s.slot_id not in blocked and self.stage_of(s.slot_id) == _DORMANT
                and not self.is_embargoed(s.slot_id)]

    def health_of(self, slot: SlotInfo) -> LayerHealth | None:
        """The LayerHealth reported for a slot (by slot id, else by the node it follows)."""
        by_id = {h.layer_id: h for h in self.snapshot.layers}
        return by_id.get(slot.slot_id) or by_id.get(slot.node_id)
