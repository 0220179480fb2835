"""Learning-rate schedulers built before attach keep working while seeds add and remove
optimizer param groups: LambdaLR, StepLR, CosineAnnealingLR, OneCycleLR and
ReduceLROnPlateau, each through a germination and then a cull or a fossilization, in a
real Tolaria session. The host's schedule is the one it has without seeds; a seed group
follows it, unless its germinate decision sets its own rate, which it then keeps."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.optim import lr_scheduler

from esper.kasmina import KasminaConfig
from esper.kasmina.testing import force_advance
from esper.leyline.v1.control_pb2 import (
    AckStatus,
    AdaptationDecision,
    BlendSchedule,
    CullAction,
    CullReason,
    GerminateAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import ReplayPolicy, TolariaConfig, attach
from esper.tolaria.optim import SEED_GROUP_KEY

S = SeedStage
LR = 0.05
STEPS = 24
GERMINATE_AT, END_AT = 4, 14  # the seed lives between these steps
BLUEPRINT = "BP-LORA-R8@1.0.0"  # affine: merged into the host on fossilization
SEED_LR = 0.003

SCHEDULERS = {
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step)),
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS,
                                                                    eta_min=1e-4),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=STEPS + 1),
    # min_lr as a list: the form that refuses a param group count it was not built with.
    "ReduceLROnPlateau": lambda opt: lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=1, min_lr=[1e-4]),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _step_scheduler(scheduler, step: int) -> None:
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(1.0)  # a flat validation loss: the rate is cut every other step
    else:
        scheduler.step()


def _reference_host_lrs(name: str) -> list[float]:
    """The host's rate after each step of a run with no seeds at all."""
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    scheduler = SCHEDULERS[name](opt)
    lrs = []
    for step in range(1, STEPS + 1):
        opt.step()
        _step_scheduler(scheduler, step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _germinate(schedule: BlendSchedule) -> AdaptationDecision:
    return AdaptationDecision(
        decision_id="germinate", issued_at_step=GERMINATE_AT, expires_at_step=STEPS,
        germinate=GerminateAction(slot_id="0", blueprint_ref=BLUEPRINT, schedule=schedule))


def _run(name: str | None, ending: str, seed_lr: float = 0.0, rule: str = "follow"):
    """Train STEPS steps with the scheduler stepping after each; the seed germinates at
    GERMINATE_AT and is culled or fossilized at END_AT. Returns what was seen per step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    # Built before attach, as most loops do (None: a constant rate, no scheduler).
    scheduler = SCHEDULERS[name](optimizer) if name else None
    decisions = [_germinate(BlendSchedule(learning_rate=seed_lr))]
    if ending == "cull":
        decisions.append(AdaptationDecision(
            decision_id="cull", issued_at_step=END_AT, expires_at_step=STEPS,
            cull=CullAction(slot_id="0", reason=CullReason.CULL_REASON_MANUAL)))
    policy = ReplayPolicy(decisions)
    session = attach(model, optimizer, policy, slots=["0"],
                     kasmina=KasminaConfig(max_seed_param_fraction=10.0),  # a tiny host
                     config=TolariaConfig(snapshot_every=2, progress=False, seed_lr=rule))
    stepped_lrs: list[dict] = []  # the rates each optimizer step actually used
    optimizer.register_step_post_hook(lambda opt, args, kwargs: stepped_lrs.append(
        {g.get(SEED_GROUP_KEY, "host"): g["lr"] for g in opt.param_groups}))
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    host_lrs, stages = [], []
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        session.step(loss, out, y)
        if ending == "fossilize" and step == END_AT:
            force_advance(session.model.slot("0"), step)
        if scheduler is not None:
            _step_scheduler(scheduler, step)
            _assert_aligned(scheduler, optimizer)
        host_lrs.append(optimizer.param_groups[0]["lr"])
        stages.append(session.model.slot("0").stage)
    session.close()
    assert all(a.status == AckStatus.ACK_STATUS_APPLIED for a in policy.acks.values()), \
        list(policy.acks.values())
    return host_lrs, stepped_lrs, stages


def _assert_aligned(scheduler, optimizer) -> None:
    groups = len(optimizer.param_groups)
    for attr in ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs"):
        if hasattr(scheduler, attr):
            assert len(getattr(scheduler, attr)) == groups, attr


@pytest.mark.parametrize("ending", ["cull", "fossilize"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_seed_group_follows_the_hosts_schedule(name: str, ending: str) -> None:
    host_lrs, stepped, stages = _run(name, ending)
    # The seed lived (its own param group) between the germination and its end.
    live = [i for i, s in enumerate(stages) if s not in (S.SEED_STAGE_DORMANT,
                                                          S.SEED_STAGE_EMBARGOED,
                                                          S.SEED_STAGE_FOSSILIZED)]
    assert live and live[0] == GERMINATE_AT - 1 and live[-1] == END_AT - 2
    final = S.SEED_STAGE_FOSSILIZED if ending == "fossilize" else S.SEED_STAGE_EMBARGOED
    assert stages[END_AT - 1] == final
    with_seed = [lrs for lrs in stepped if "0" in lrs]
    assert len(with_seed) == END_AT - GERMINATE_AT
    # Every step with the seed trained it at the host's rate of that step.
    assert all(lrs["0"] == pytest.approx(lrs["host"]) for lrs in with_seed)
    # The seed's group left with it (merged on fossilization, dropped on cull) ...
    assert all(set(lrs) == {"host"} for lrs in stepped[END_AT:])
    # ... and the host's schedule is exactly the one of a run without seeds.
    assert host_lrs == pytest.approx(_reference_host_lrs(name))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_seed_with_its_own_rate_keeps_it(name: str) -> None:
    host_lrs, stepped, _ = _run(name, "cull", seed_lr=SEED_LR)
    with_seed = [lrs for lrs in stepped if "0" in lrs]
    assert len(with_seed) == END_AT - GERMINATE_AT
    assert all(lrs["0"] == pytest.approx(SEED_LR) for lrs in with_seed)
    assert len({round(lrs["host"], 12) for lrs in with_seed}) > 1  # while the host's moved
    assert host_lrs == pytest.approx(_reference_host_lrs(name))


@pytest.mark.parametrize("ending", ["cull", "fossilize"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_rewarmed_seed_group_starts_at_the_hosts_initial_rate(name: str, ending: str) -> None:
    host_lrs, stepped, _ = _run(name, ending, rule="rewarm")
    with_seed = [lrs for lrs in stepped if "0" in lrs]
    assert len(with_seed) == END_AT - GERMINATE_AT
    # The host's rate when the seed's group was added (the step before its first step).
    at_birth = host_lrs[GERMINATE_AT - 2]
    initial = {"OneCycleLR": 0.2 / 25}.get(name, LR)  # OneCycleLR starts at max_lr / 25
    if name == "ReduceLROnPlateau" or at_birth >= initial:
        # No initial_lr kept (ReduceLROnPlateau), or not decayed (OneCycleLR warming up):
        # the seed follows the host.
        assert all(lrs["0"] == pytest.approx(lrs["host"]) for lrs in with_seed)
    else:
        scale = initial / at_birth
        assert scale > 1
        # Each scheduler step moves it as it moves the host's, from higher up: exactly
        # proportional for the multiplicative schedules, towards the same floor for the
        # cosine (eta_min) and within the rescaled cycle for OneCycleLR.
        assert all(lrs["0"] > lrs["host"] for lrs in with_seed)
        if name in ("LambdaLR", "StepLR"):
            assert all(lrs["0"] == pytest.approx(lrs["host"] * scale) for lrs in with_seed)
    assert all(set(lrs) == {"host"} for lrs in stepped[END_AT:])
    assert host_lrs == pytest.approx(_reference_host_lrs(name))


def test_rewarm_without_a_scheduler_follows_the_constant_rate() -> None:
    host_lrs, stepped, _ = _run(None, "cull", rule="rewarm")
    with_seed = [lrs for lrs in stepped if "0" in lrs]
    assert len(with_seed) == END_AT - GERMINATE_AT
    assert all(lrs == {"host": LR, "0": LR} for lrs in with_seed)
    assert host_lrs == [LR] * STEPS


def test_seed_lr_rule_is_validated() -> None:
    with pytest.raises(ValueError, match="seed_lr"):
        TolariaConfig(seed_lr="warm")


def test_a_resumed_run_keeps_its_schedulers_in_step(tmp_path) -> None:
    """A scheduler built before attach(resume=...) gets the restored seed group, which
    keeps its own rate."""
    from esper.tolaria import save_checkpoint

    def start(resume=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        scheduler = SCHEDULERS["StepLR"](optimizer)
        session = attach(model, optimizer, ReplayPolicy([_germinate(BlendSchedule(
            learning_rate=SEED_LR))]), slots=["0"], resume=resume,
            kasmina=KasminaConfig(max_seed_param_fraction=10.0),
            config=TolariaConfig(snapshot_every=2, progress=False))
        return model, optimizer, scheduler, session

    def train(model, optimizer, scheduler, session, steps):
        x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
        for step in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            session.step(loss)
            _step_scheduler(scheduler, step)
            _assert_aligned(scheduler, optimizer)

    model, optimizer, scheduler, session = start()
    train(model, optimizer, scheduler, session, 6)
    assert session.groups.seed_slots() == ["0"]
    save_checkpoint(tmp_path / "run.pt", session)
    session.close(expire_pending=False)

    model, optimizer, scheduler, session = start(resume=str(tmp_path / "run.pt"))
    assert session.groups.seed_slots() == ["0"]
    _assert_aligned(scheduler, optimizer)
    seed_lrs = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: seed_lrs.append(
        session.groups.learning_rate("0")))
    train(model, optimizer, scheduler, session, 8)
    assert seed_lrs == pytest.approx([SEED_LR] * 8)
    assert optimizer.param_groups[0]["lr"] < LR  # StepLR moved the host meanwhile
    session.close()
