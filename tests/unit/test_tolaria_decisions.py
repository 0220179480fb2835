"""Bad decisions are rejected with a reason and training continues; expired decisions are
acked EXPIRED; duplicates are never acked twice; a germinate whose kernel is still being
fetched waits (never blocking a step) and is applied at a later safe point, or expires."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from esper.blueprints.artifact import kernel_id_for, pack_kernel, sha256_hex
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.kasmina import KasminaConfig
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.control_pb2 import (
    AckStatus,
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    FossilizeAction,
    GerminateAction,
    WaitAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import ReplayPolicy, TolariaConfig, attach

S = SeedStage
A = AckStatus
SCHEDULE = BlendSchedule(training_steps=4, blend_steps=4, shadow_steps=2, probation_steps=2)
IA3 = "BP-IA3@1.0.0"
LORA = "BP-LORA-R8@1.0.0"  # 512 params: over this tiny host's seed budget


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _data(n: int = 64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 16, generator=gen)
    return x, (x[:, :4].argmax(-1))


def _train(session, model, optimizer, steps: int, losses: list[float]) -> None:
    x, y = _data()
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        session.step(loss, out, y)
        losses.append(loss.item())


def _decision(did: str, step: int, horizon: int = 100, **action) -> AdaptationDecision:
    return AdaptationDecision(decision_id=did, issued_at_step=step,
                              expires_at_step=step + horizon, **action)


def _session(policy, **kwargs):
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = attach(model, optimizer, policy, slots=["0"], example_input=torch.zeros(2, 16),
                     config=TolariaConfig(snapshot_every=2, progress=False), **kwargs)
    acks: list = []
    session.ack_listeners.append(acks.append)
    return model, optimizer, session, acks


def _germinate(session, did: str, step: int, ref: str = IA3, **overrides) -> AdaptationDecision:
    cand = session.local_kernels.find(ref, session.model.slot("0").shape)
    fields = {"slot_id": "0", "blueprint_ref": ref, "kernel_id": cand.kernel.kernel_id,
              "kernel_sha256": cand.kernel.sha256, "schedule": SCHEDULE}
    fields.update(overrides)
    return _decision(did, step, germinate=GerminateAction(**fields))


def test_bad_decisions_rejected_with_reason_and_training_continues() -> None:
    replay = ReplayPolicy([])
    # Half the host's parameters, so one LoRA-R64 (512) is over budget in this small host.
    model, optimizer, session, acks = _session(replay, kasmina=KasminaConfig(max_seed_param_fraction=0.5))
    good = _germinate(session, "good", 10)
    replay.log = sorted([
        _decision("unknown-slot", 2, advance=AdvanceAction(slot_id="nope")),
        _germinate(session, "unknown-blueprint", 2, blueprint_ref="BP-NOPE@1.0.0"),
        _decision("illegal", 2, fossilize=FossilizeAction(slot_id="0")),
        _decision("illegal-advance", 2, advance=AdvanceAction(
            slot_id="0", target_stage=S.SEED_STAGE_BLENDING)),
        _germinate(session, "bad-digest", 4, kernel_sha256="0" * 64),
        _germinate(session, "over-budget", 6, ref=LORA),
        _decision("expired", 4, horizon=-3, wait=WaitAction(steps=1)),
        _decision("no-action", 4),
        _decision("wait", 4, wait=WaitAction(steps=3)),
        _decision("wait", 6, wait=WaitAction(steps=3)),  # a duplicate id: never acked twice
        good,
    ], key=lambda d: d.issued_at_step)
    losses: list[float] = []
    _train(session, model, optimizer, 14, losses)
    by_id = {a.decision_id: a for a in acks}
    assert Counter(a.decision_id for a in acks)["wait"] == 1
    assert session.duplicates_dropped == 1
    expect = {
        "unknown-slot": (A.ACK_STATUS_REJECTED, "unknown slot 'nope'"),
        "unknown-blueprint": (A.ACK_STATUS_REJECTED, "unknown blueprint"),
        "illegal": (A.ACK_STATUS_REJECTED, "illegal seed transition DORMANT -> FOSSILIZED"),
        "illegal-advance": (A.ACK_STATUS_REJECTED, "illegal seed transition DORMANT -> BLENDING"),
        "bad-digest": (A.ACK_STATUS_REJECTED, "sha256"),
        "expired": (A.ACK_STATUS_EXPIRED, "expired at step 1"),
        "no-action": (A.ACK_STATUS_REJECTED, "no action"),
        "over-budget": (A.ACK_STATUS_REJECTED, "budget: seed params 0 + 512"),
        "wait": (A.ACK_STATUS_APPLIED, "waiting 3 steps"),
        "good": (A.ACK_STATUS_APPLIED, "germinated"),
    }
    for did, (status, words) in expect.items():
        assert by_id[did].status == status, (did, by_id[did])
        assert words in by_id[did].reason, (did, by_id[did].reason)
    assert session.model.slot("0").stage == S.SEED_STAGE_GERMINATED
    assert len(losses) == 14 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]  # it kept learning through the rejections
    assert set(replay.acks) == set(by_id)  # acks went back to the issuing source
    session.close()


SLOT_SHAPE = SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=32)  # after Linear(16, 32)


def _ia3_kernel(shape=SLOT_SHAPE):
    """An IA3 kernel that is not one of the local catalogue's (another build seed)."""
    spec = get_builtin(IA3)
    data = pack_kernel(spec, shape, build_seed(spec, shape, seed=7))
    digest = sha256_hex(data)
    return kernel_id_for(digest), digest, data


class _SlowLibrary:
    """A kernel library whose download finishes only when released (a real fetch function
    returning real kernel bytes, run by Kasmina's KernelCache in its prefetch threads)."""

    def __init__(self, kernels: dict[str, bytes]) -> None:
        self.kernels = kernels
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, kernel_id: str) -> bytes:
        self.calls += 1
        assert self.release.wait(30), "download never released"
        return self.kernels[kernel_id]


def test_germinate_waits_for_its_kernel_without_blocking_steps() -> None:
    kernel_id, digest, data = _ia3_kernel()
    library = _SlowLibrary({kernel_id: data})
    replay = ReplayPolicy([])
    model, optimizer, session, acks = _session(replay, kernel_fetch=library)
    replay.log = [_decision("remote", 2, horizon=20, germinate=GerminateAction(
        slot_id="0", blueprint_ref=IA3, kernel_id=kernel_id, kernel_sha256=digest,
        schedule=SCHEDULE))]
    losses: list[float] = []
    _train(session, model, optimizer, 8, losses)  # steps go on while the download hangs
    assert not acks and [d.decision_id for d in session.pending] == ["remote"]
    assert session.model.slot("0").stage == S.SEED_STAGE_DORMANT
    library.release.set()
    for _ in range(200):
        _train(session, model, optimizer, 1, losses)
        if acks:
            break
    assert [(a.decision_id, a.status) for a in acks] == [("remote", A.ACK_STATUS_APPLIED)]
    assert session.model.slot("0").record.kernel_id == kernel_id
    assert library.calls == 1
    session.close()


def test_germinate_whose_kernel_never_arrives_expires() -> None:
    kernel_id, digest, data = _ia3_kernel()
    library = _SlowLibrary({kernel_id: data})
    replay = ReplayPolicy([])
    model, optimizer, session, acks = _session(replay, kernel_fetch=library)
    replay.log = [_decision("late", 2, horizon=4, germinate=GerminateAction(
        slot_id="0", blueprint_ref=IA3, kernel_id=kernel_id, kernel_sha256=digest))]
    _train(session, model, optimizer, 10, [])
    assert [(a.decision_id, a.status) for a in acks] == [("late", A.ACK_STATUS_EXPIRED)]
    assert session.model.slot("0").stage == S.SEED_STAGE_DORMANT
    library.release.set()
    session.close()


def test_close_expires_pending_decisions_exactly_once() -> None:
    kernel_id, digest, data = _ia3_kernel()
    library = _SlowLibrary({kernel_id: data})
    replay = ReplayPolicy([])
    model, optimizer, session, acks = _session(replay, kernel_fetch=library)
    replay.log = [_decision("pending", 2, horizon=50, germinate=GerminateAction(
        slot_id="0", blueprint_ref=IA3, kernel_id=kernel_id, kernel_sha256=digest))]
    _train(session, model, optimizer, 4, [])
    session.close()
    session.close()
    library.release.set()
    assert [(a.decision_id, a.status) for a in acks] == [("pending", A.ACK_STATUS_EXPIRED)]


class _CountingReplay(ReplayPolicy):
    """A replay that counts how often the session asks it for decisions."""

    def __init__(self, at_snapshots: bool) -> None:
        super().__init__([])
        self.decides_at_snapshots = at_snapshots
        self.asked = 0

    def decisions(self) -> list[AdaptationDecision]:
        self.asked += 1
        return super().decisions()


@pytest.mark.parametrize(("at_snapshots", "asked"), [(True, 4), (False, 8)])
def test_a_source_deciding_at_snapshots_is_asked_at_safe_points_only(at_snapshots, asked) -> None:
    source = _CountingReplay(at_snapshots)
    model, optimizer, session, _ = _session(source)  # a safe point every 2 steps
    _train(session, model, optimizer, 8, [])
    assert source.asked == asked
    session.close()


class _CadenceReplay(ReplayPolicy):
    """A source that asks for a snapshot every `every` steps once `after` steps ran (as a
    remote Tamiyo's accept may arrive mid-run); records the steps it observed."""

    def __init__(self, at_snapshots: bool, after: int, every: int) -> None:
        super().__init__([])
        self.decides_at_snapshots = at_snapshots
        self.after, self.every = after, every
        self.model = None
        self.seen: list[int] = []

    def snapshot_every(self) -> int | None:
        running = self.model is not None and self.model.global_step >= self.after
        return self.every if running else None

    def observe(self, snapshot) -> None:
        self.seen.append(snapshot.step)
        super().observe(snapshot)


@pytest.mark.parametrize(("at_snapshots", "seen"), [
    # Asked for between safe points (looked for at every step): in force from step 7 on.
    (False, [2, 4, 6, 10, 15, 20]),
    # A source deciding at snapshots only: in force from the next safe point (step 8).
    (True, [2, 4, 6, 8, 10, 15, 20]),
])
def test_a_cadence_asked_for_mid_run_takes_effect(at_snapshots, seen) -> None:
    source = _CadenceReplay(at_snapshots, after=7, every=5)
    model, optimizer, session, _ = _session(source)  # a safe point every 2 steps
    source.model = session.model
    _train(session, model, optimizer, 20, [])
    assert source.seen == seen
    assert session.snapshot_every == 5 and session.health.every == 5
    session.close()
