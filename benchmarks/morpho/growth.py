"""Policy sources for the growth controls: germinations planned in advance (at fixed
times, or at random times into random slots with random blueprints), with every seed's
later lifecycle (advance, fossilize, cull) decided by Esper's own local heuristic, so the
controls differ from Esper only in *when, where and what* they grow.

`ScheduledGrowth` is a LocalPolicy (attach() hands it the local kernel catalogue) whose
heuristic never germinates (no plateau is ever long enough, no slowdown counts); the planned germinations are
issued as ordinary GerminateAction decisions through the session, one live seed at a time
(as the heuristic does), each re-planned on a rejection at most MAX_TRIES times. On a host
that declares its residual stream, a planned widening (`features`) is a WidenStreamAction,
and a random draw may pick the stream (widened as Esper's heuristic widens it) as one more
place to grow, while it can widen and no seed has grown."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from esper.leyline.lifecycle import LIVE_STAGES
from esper.leyline.v1.control_pb2 import (
    AckStatus,
    GerminateAction,
    WidenStreamAction,
)
from esper.leyline.v1.signals_pb2 import TrainingSnapshot
from esper.policy.context import PolicyContext
from esper.policy.decisions import make_decision
from esper.policy.heuristic import blend_schedule, stream_widening
from esper.tolaria import LOCAL_HEURISTIC, LocalPolicy

# The heuristic at Esper's local defaults, except that it never sees a reason to grow:
# no plateau, the slowdown rule off and no eager growth of cheap kernels.
LIFECYCLE_ONLY = dataclasses.replace(LOCAL_HEURISTIC, plateau_patience=10**9, slowdown_ratio=0.0,
                                     eager_flops_fraction=0.0)
MAX_TRIES = 3
# A random draw's name for the residual stream among the slots.
STREAM = "<stream>"


@dataclass
class Planned:
    """A germination due at `step`: `slot_id` / `blueprint_ref` None = drawn at random
    (a dormant slot at that time, or the stream; a blueprint that fits the slot); or, with
    `features`, a widening of the residual stream by that many features."""

    step: int
    slot_id: str | None = None
    blueprint_ref: str | None = None
    features: int = 0
    tries: int = 0
    chosen: tuple[str, str] | None = None  # (slot, blueprint) of the decision in flight


class ScheduledGrowth(LocalPolicy):
    name = "scheduled"

    def __init__(self, plan: list[Planned], rng: random.Random | None = None) -> None:
        super().__init__(config=LIFECYCLE_ONLY)
        self.plan = sorted(plan, key=lambda p: p.step)
        self.rng = rng or random.Random(0)
        self.in_flight: dict[str, Planned] = {}
        self.applied: list[dict] = []
        self.dropped: list[str] = []

    def observe(self, snapshot: TrainingSnapshot) -> None:
        super().observe(snapshot)  # the heuristic manages live seeds
        if self.in_flight or not self.plan or self.plan[0].step > snapshot.step:
            return
        if any(s.stage in LIVE_STAGES for s in snapshot.seeds):
            return  # one live seed at a time, as the heuristic grows
        item = self.plan.pop(0)
        # The slots the heuristic itself could germinate in (dormant, outside embargo, not
        # stacked on a seed that has not fossilized): the one open-slot rule; the graph
        # with the slots' current shapes (a widened stream changes them).
        ctx = PolicyContext.build(snapshot, self._graph)
        dormant = sorted(s.slot_id for s in ctx.open_slots())
        widening = item.features
        if not widening and item.slot_id is None:
            open_stream = stream_widening(ctx, self.policy.config.stream_growth_fraction)
            options = dormant + ([STREAM] if open_stream else [])
            drawn = self.rng.choice(options) if options else None
            widening = open_stream if drawn == STREAM else 0
            slot_id = None if drawn == STREAM else drawn
        else:
            slot_id = item.slot_id
        if widening:
            self._issue(ctx, item, WidenStreamAction(features=widening), (STREAM, f"+{widening}"))
            return
        if slot_id not in dormant:
            self.dropped.append(f"step {snapshot.step}: slot {slot_id} not dormant")
            return
        shape = next(s.shape for s in ctx.graph.slots if s.slot_id == slot_id)
        refs = sorted(c.kernel.blueprint_ref for c in self.candidates.kernels_for(shape))
        ref = item.blueprint_ref or self.rng.choice(refs)
        try:
            cand = self.candidates.find(ref, shape)
        except KeyError as exc:
            self.dropped.append(str(exc))
            return
        self._issue(ctx, item, GerminateAction(
            slot_id=slot_id, blueprint_ref=ref, kernel_id=cand.kernel.kernel_id,
            kernel_sha256=cand.kernel.sha256, schedule=blend_schedule(self.policy.config)),
            (slot_id, ref))

    def _issue(self, ctx: PolicyContext, item: Planned, action, chosen: tuple[str, str]) -> None:
        decision = make_decision(ctx, action, policy_version="scheduled-growth",
                                 horizon_steps=self.policy.config.decision_horizon_steps,
                                 confidence=1.0, rationale=f"planned growth (step {item.step})")
        self._queue.append(decision)
        item.chosen = chosen
        self.in_flight[decision.decision_id] = item

    def acked(self, ack) -> None:
        item = self.in_flight.pop(ack.decision_id, None)
        if item is None:
            return
        slot_id, ref = item.chosen
        if ack.status == AckStatus.ACK_STATUS_APPLIED:
            self.applied.append({"step": ack.step, "slot": slot_id, "blueprint": ref})
            return
        item.tries += 1
        if item.tries < MAX_TRIES:
            item.step = ack.step
            self.plan.insert(0, item)  # re-drawn (random parts) at the next snapshot
        else:
            self.dropped.append(f"{slot_id} {ref}: {ack.reason}")
