"""Every lifecycle transition reached in a real training loop (digits, a small CNN),
driven by decisions from a scripted policy through the hook API; seed param groups
follow the seeds; decisions are applied only between steps and acked exactly once."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from torch.nn import functional as F

from esper.leyline.lifecycle import TRANSITIONS, next_stage
from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    CullAction,
    CullReason,
    FossilizeAction,
    GerminateAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.tolaria import TolariaConfig, attach
from esper.tolaria.optim import SEED_GROUP_KEY
from esper.tolaria.tasks import load_task

S = SeedStage
SEED_LR = 0.02
SCHEDULE = BlendSchedule(training_steps=4, blend_steps=4, shadow_steps=2, probation_steps=2,
                         learning_rate=SEED_LR)
EMBARGO_STEPS = 4
HORIZON = 50


# Per slot, where each successive seed's life ends: fc1 grows one seed to FOSSILIZED; conv1
# gets a seed culled in each live stage in turn (CULLED -> EMBARGOED -> RESETTING -> DORMANT
# between them), so every edge of the lifecycle table is taken.
PLANS = {
    "fc1": ("BP-LORA-R8@1.0.0", [S.SEED_STAGE_FOSSILIZED]),
    "conv1": ("BP-IA3@1.0.0", [S.SEED_STAGE_GERMINATED, S.SEED_STAGE_TRAINING,
                               S.SEED_STAGE_BLENDING, S.SEED_STAGE_SHADOWING,
                               S.SEED_STAGE_PROBATIONARY]),
}
LIVE_OR_DONE = {S.SEED_STAGE_DORMANT, S.SEED_STAGE_EMBARGOED, S.SEED_STAGE_RESETTING,
                S.SEED_STAGE_CULLED}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedPolicy:
    """Follows PLANS, reacting to the seed states of each snapshot (a PolicySource)."""

    name = "scripted"

    def __init__(self, plans=PLANS) -> None:
        self.ids = (f"d-{i}" for i in itertools.count())
        self.plans = {slot: (ref, list(ends)) for slot, (ref, ends) in plans.items()}
        self.issued: list[AdaptationDecision] = []
        self.queue: list[AdaptationDecision] = []
        self.reports: list[FieldReport] = []
        self.kernels = None  # LocalKernels, set by the test after attach

    def start(self, open_message):
        self.slots = {s.slot_id: s for s in open_message.graph.slots}

    def snapshot_every(self):
        return None

    def finished(self) -> bool:
        return all(not ends for _, ends in self.plans.values())

    def _issue(self, step: int, **action) -> None:
        d = AdaptationDecision(decision_id=next(self.ids), issued_at_step=step,
                               expires_at_step=step + HORIZON, **action)
        self.issued.append(d)
        self.queue.append(d)

    def observe(self, snap):
        for seed in snap.seeds:
            if seed.slot_id in self.plans:
                self._drive(snap.step, seed)

    def _drive(self, step, seed):
        ref, ends = self.plans[seed.slot_id]
        if not ends or seed.stage in (S.SEED_STAGE_EMBARGOED, S.SEED_STAGE_RESETTING):
            return
        slot_id, stage = seed.slot_id, seed.stage
        if stage == S.SEED_STAGE_DORMANT:
            cand = self.kernels.find(ref, self.slots[slot_id].shape)
            self._issue(step, germinate=GerminateAction(
                slot_id=slot_id, blueprint_ref=ref, kernel_id=cand.kernel.kernel_id,
                kernel_sha256=cand.kernel.sha256, schedule=SCHEDULE))
        elif stage == ends[0] and stage != S.SEED_STAGE_FOSSILIZED:
            self._issue(step, cull=CullAction(slot_id=slot_id, reason=CullReason.CULL_REASON_MANUAL,
                                              detail="scripted", embargo_steps=EMBARGO_STEPS))
        elif stage == S.SEED_STAGE_PROBATIONARY:
            if seed.steps_in_stage >= SCHEDULE.probation_steps:
                self._issue(step, fossilize=FossilizeAction(slot_id=slot_id))
        elif stage == S.SEED_STAGE_FOSSILIZED:
            ends.pop(0)
        else:
            self._issue(step, advance=AdvanceAction(slot_id=slot_id, target_stage=next_stage(stage)))

    def decisions(self):
        out, self.queue = self.queue, []
        return out

    def acked(self, ack):
        pass

    def field_report(self, report):
        ends = self.plans[report.slot_id][1]
        if ends and report.final_stage == S.SEED_STAGE_CULLED:
            ends.pop(0)
        self.reports.append(report)

    def outage(self):
        return None

    def close(self):
        pass


def _digits(seed: int = 0, batch_size: int = 32):
    torch.manual_seed(seed)
    # The wide host: these lifecycle scripts were tuned on it (the narrow default host's
    # gates pass at other steps).
    return load_task("digits", batch_size=batch_size, seed=seed, host="wide")


def test_every_transition_in_a_real_loop() -> None:
    task = _digits()
    model = task.model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    policy = ScriptedPolicy()
    session = attach(model, optimizer, policy, slots=["conv1", "fc1"],
                     example_input=task.example_input,
                     config=TolariaConfig(snapshot_every=2, progress=False))
    policy.kernels = session.local_kernels
    in_step = {"now": False}
    transitions, acks, groups_seen = [], [], []
    session.model.transition_listeners.append(
        lambda e: (transitions.append((e.from_stage, e.to_stage)),
                   pytest.fail("transition inside a step") if in_step["now"] else None))
    session.ack_listeners.append(
        lambda a: (acks.append(a), pytest.fail("ack inside a step") if in_step["now"] else None))

    def done() -> bool:
        return policy.finished() and transitions[-1] == (S.SEED_STAGE_RESETTING,
                                                         S.SEED_STAGE_DORMANT)

    losses = []
    for _epoch in range(20):
        for x, y in task.train_loader:
            in_step["now"] = True
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            in_step["now"] = False
            session.step(loss, out, y)
            losses.append(loss.item())
            groups_seen.append(tuple(g.get(SEED_GROUP_KEY) for g in optimizer.param_groups))
            if done():
                break
        session.end_epoch({"val_loss": losses[-1]})
        if done():
            break
    session.close()

    every_edge = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    reached = set(transitions)
    assert done(), f"script unfinished after {len(losses)} steps: {policy.plans}"
    assert reached == every_edge
    assert all(torch.isfinite(torch.tensor(losses)))
    # Every decision issued was acked exactly once.
    counts = Counter(a.decision_id for a in acks)
    assert set(counts) == {d.decision_id for d in policy.issued}
    assert max(counts.values()) == 1
    # Seed param groups: added for each seed with the schedule's lr, removed on merge/cull.
    assert any("fc1" in g for g in groups_seen) and any("conv1" in g for g in groups_seen)
    assert groups_seen[-1] == (None,)
    # Field reports: one per seed that ended (fc1 fossilized, conv1 culled).
    finals = sorted((r.slot_id, r.final_stage) for r in policy.reports)
    assert finals == [("conv1", S.SEED_STAGE_CULLED)] * 5 + [("fc1", S.SEED_STAGE_FOSSILIZED)]
    fossil = next(r for r in policy.reports if r.slot_id == "fc1")
    assert fossil.params_added > 0 and fossil.lifetime_steps > 0
    assert fossil.germinate_decision_id in counts
    summary = session.summary()
    assert summary["seeds_fossilized"] == 1 and summary["seeds_culled"] == 5


def test_seed_group_has_own_lr_and_state_dropped_on_cull() -> None:
    task = _digits()
    model = task.model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    session = attach(model, optimizer, "none", slots=["fc1"], example_input=task.example_input,
                     config=TolariaConfig(snapshot_every=1000, progress=False))
    cand = session.local_kernels.find("BP-LORA-R8@1.0.0", session.model.slot("fc1").shape)
    germ = AdaptationDecision(decision_id="g", expires_at_step=100, germinate=GerminateAction(
        slot_id="fc1", blueprint_ref="BP-LORA-R8@1.0.0", kernel_id=cand.kernel.kernel_id,
        kernel_sha256=cand.kernel.sha256, schedule=SCHEDULE))
    session.pending.append(germ)
    session._apply_pending()
    advance = AdaptationDecision(decision_id="a", expires_at_step=100, advance=AdvanceAction(
        slot_id="fc1", target_stage=S.SEED_STAGE_TRAINING))
    session.pending.append(advance)
    session._apply_pending()
    group = next(g for g in optimizer.param_groups if g.get(SEED_GROUP_KEY) == "fc1")
    assert group["lr"] == pytest.approx(SEED_LR)
    seed_params = list(group["params"])
    x, y = next(iter(task.train_loader))
    for _ in range(3):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        session.step(loss, out, y)
    assert all(p in optimizer.state for p in seed_params)  # Adam state for the seed exists
    session.pending.append(AdaptationDecision(decision_id="c", expires_at_step=100, cull=CullAction(
        slot_id="fc1", reason=CullReason.CULL_REASON_MANUAL)))
    session._apply_pending()
    assert [g.get(SEED_GROUP_KEY) for g in optimizer.param_groups] == [None]
    assert not any(p in optimizer.state for p in seed_params)
    session.close()
