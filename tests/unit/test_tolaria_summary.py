"""session.summary() is a typed RunSummary that reads as a report (per seed: slot,
blueprint, why, stages with their steps, fate and reason), with WAIT decisions counted
apart from applied ones, training FLOPs of host and seeds, and one final parameter count
that is the unwrapped model's; close() settles the seeds still live; seed transitions are
logged at INFO; end_epoch refuses metric keys it does not know."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch.nn import functional as F

from esper.kasmina import KasminaConfig, MorphableModel
from esper.kasmina.testing import force_advance
from esper.leyline.v1.control_pb2 import (
    AckStatus,
    AdaptationDecision,
    AdvanceAction,
    CullAction,
    CullReason,
    GerminateAction,
    WaitAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import (
    ReplayPolicy,
    ResourceBudget,
    RunSummary,
    TolariaConfig,
    attach,
    save_checkpoint,
)
from esper.tolaria.flops import FORWARDS_PER_STEP

S = SeedStage
STEPS, BATCH = 30, 32
FOSSILIZE_AT = 20
# Multiply-adds of one example through the host's three Linear layers, 2 FLOPs each.
HOST_FLOPS_PER_EXAMPLE = 2 * (8 * 16 + 16 * 16 + 16 * 4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _decision(i: str, step: int, rationale: str = "", **action) -> AdaptationDecision:
    return AdaptationDecision(decision_id=i, issued_at_step=step, expires_at_step=STEPS,
                              rationale=rationale, **action)


DECISIONS = [
    _decision("wait", 2, wait=WaitAction(steps=10)),
    _decision("g0", 2, "plateau: slot 0 has the best benefit per cost",
              germinate=GerminateAction(slot_id="0", blueprint_ref="BP-MLP-GELU@1.0.0")),
    _decision("a0", 4, advance=AdvanceAction(slot_id="0", target_stage=S.SEED_STAGE_TRAINING)),
    _decision("g2", 4, "second seed", germinate=GerminateAction(
        slot_id="2", blueprint_ref="BP-LORA-R8@1.0.0")),
    _decision("c2", 10, "it hurt", cull=CullAction(
        slot_id="2", reason=CullReason.CULL_REASON_REGRESSION, detail="loss went up")),
    _decision("g4", 12, "third seed", germinate=GerminateAction(
        slot_id="4", blueprint_ref="BP-LORA-R8@1.0.0")),
    _decision("bad", 12, cull=CullAction(slot_id="nope")),  # rejected: unknown slot
]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _attach(model, policy, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    session = attach(model, optimizer, policy, slots=["0", "2", "4"],
                     kasmina=KasminaConfig(max_seed_param_fraction=10.0),  # a tiny host
                     config=TolariaConfig(run_id="summary-run", snapshot_every=2,
                                          progress=False), **kwargs)
    return optimizer, session


def _train(model, optimizer, session, steps: int, hook=None) -> None:
    x, y = torch.randn(BATCH, 8), torch.randint(0, 4, (BATCH,))
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        session.step(loss, out, y)
        if hook is not None:
            hook(session)


def _fossilize_slot_0(session) -> None:
    if session.model.global_step == FOSSILIZE_AT:
        force_advance(session.model.slot("0"), FOSSILIZE_AT)


def test_summary_reports_every_seed_and_settles_the_live_one(caplog) -> None:
    model = _model()
    policy = ReplayPolicy(DECISIONS)
    optimizer, session = _attach(model, policy)
    with caplog.at_level(logging.INFO, logger="esper.tolaria"):
        _train(model, optimizer, session, STEPS, _fossilize_slot_0)
        session.end_epoch({"val_loss": 1.0, "val_accuracy": torch.tensor(0.5)})
        assert session.model.slot("4").stage == S.SEED_STAGE_GERMINATED
        session.close()
    summary = session.summary()

    assert isinstance(summary, RunSummary)
    assert (summary.run_id, summary.step, summary.epoch) == ("summary-run", STEPS, 1)
    assert summary.val_accuracy == pytest.approx(0.5)
    # Counts: three seeds; the one still live at close was settled (culled: its gates
    # could not pass before the end).
    assert (summary.seeds_germinated, summary.seeds_fossilized, summary.seeds_culled,
            summary.live_seeds) == (3, 1, 2, 0)
    assert summary.decisions == {"applied": 5, "waits": 1, "rejected": 1, "expired": 0}
    assert {a.status for a in policy.acks.values()} == {
        AckStatus.ACK_STATUS_APPLIED, AckStatus.ACK_STATUS_REJECTED}  # the wire is unchanged

    by_slot = {s.slot_id: s for s in summary.seeds}
    fossil, culled, settled = by_slot["0"], by_slot["2"], by_slot["4"]
    assert fossil.blueprint_ref == "BP-MLP-GELU@1.0.0" and fossil.params > 0
    assert fossil.why == "plateau: slot 0 has the best benefit per cost"
    assert fossil.stages[:3] == [("GERMINATED", 2), ("TRAINING", 4), ("BLENDING", FOSSILIZE_AT)]
    assert [s for s, _ in fossil.stages] == ["GERMINATED", "TRAINING", "BLENDING", "SHADOWING",
                                             "PROBATIONARY", "FOSSILIZED"]
    assert fossil.stages[-1] == ("FOSSILIZED", FOSSILIZE_AT)
    assert fossil.fate == "fossilized" and "G5" in fossil.reason
    assert culled.stages == [("GERMINATED", 4), ("CULLED", 10)]
    assert culled.fate == "culled" and culled.reason == "REGRESSION: loss went up"
    assert settled.stages[0] == ("GERMINATED", 12) and settled.stages[-1][1] == STEPS
    assert settled.fate == "culled" and "the run ended" in settled.reason

    # One final parameter count: that of the plain model unwrap() gives (no live seed left
    # out, so no warning), the MLP seed included (trained, it is not affine: not merged).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = session.model.unwrap()
    assert summary.params_after == sum(p.numel() for p in plain.parameters())
    assert summary.params_after == summary.host_params_before + fossil.params
    assert summary.seed_params == fossil.params

    # FLOPs: the host's Linear layers over every step; the MLP seed (from TRAINING on, when
    # its hook runs it) adds its own.
    host = FORWARDS_PER_STEP * BATCH * HOST_FLOPS_PER_EXAMPLE * STEPS
    assert summary.host_flops == pytest.approx(host)
    seed_weights = sum(p.numel() for p in session.model.slot("0").seed.parameters()
                       if p.dim() == 2)  # its Linear layers' multiply-adds per example
    assert summary.seed_flops == pytest.approx(
        FORWARDS_PER_STEP * BATCH * 2 * seed_weights * (STEPS - 4))

    # The report names each seed's slot, blueprint, why, stages with steps, fate, reason.
    report = str(summary)
    assert "run summary-run: 1 epochs, 30 steps" in report
    assert "3 germinated, 1 fossilized, 2 culled, 0 live" in report
    assert "5 applied, 1 waits, 1 rejected, 0 expired" in report
    assert f"in slot 0: BP-MLP-GELU@1.0.0 ({fossil.params:,} params) - plateau" in report
    assert f"GERMINATED@2 -> TRAINING@4 -> BLENDING@{FOSSILIZE_AT}" in report
    assert "GERMINATED@4 -> CULLED@10: culled (REGRESSION: loss went up)" in report
    assert "training FLOPs (estimate): host 2.58e+06" in report
    # The dict it replaced still answers.
    assert summary["seeds_fossilized"] == 1 and summary["acks"]["waits"] == 1
    assert summary.get("val_loss") == pytest.approx(1.0)

    # Every seed transition was logged at INFO.
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("esper.tolaria")]
    assert any("in 0 (BP-MLP-GELU@1.0.0): DORMANT -> GERMINATED at step 2" in m
               and "plateau" in m for m in logged)
    assert any("in 4 (BP-LORA-R8@1.0.0)" in m and "the run ended" in m for m in logged)


def test_close_fossilizes_a_seed_whose_gates_pass() -> None:
    model = _model()
    optimizer, session = _attach(model, ReplayPolicy(DECISIONS[:2]))
    _train(model, optimizer, session, 6)
    slot = session.model.slot("0")
    force_advance(slot, 6, until=S.SEED_STAGE_PROBATIONARY)
    # Hand-set measurements: probation held long enough, and the loss fell since the
    # seed germinated (G5's two conditions).
    slot.record.steps_in_stage, slot.record.loss_at_germination = 10**6, 1e3
    session.close()
    assert slot.stage == S.SEED_STAGE_FOSSILIZED
    seed = session.summary().seeds[0]
    assert seed.fate == "fossilized" and seed.stages[-1] == ("FOSSILIZED", 6)


def test_a_run_to_be_resumed_keeps_its_seeds_live_and_its_history(tmp_path) -> None:
    model = _model()
    optimizer, session = _attach(model, ReplayPolicy(DECISIONS[:2]))
    _train(model, optimizer, session, 6)
    save_checkpoint(tmp_path / "run.pt", session)
    session.close(expire_pending=False)  # to be resumed: the seed stays live
    assert session.model.slot("0").is_live() and session.summary().live_seeds == 1

    model = _model()
    optimizer, session = _attach(model, ReplayPolicy(DECISIONS[:2]),
                                 resume=str(tmp_path / "run.pt"))
    restored = session.summary()
    assert [s.stages for s in restored.seeds] == [[("GERMINATED", 2)]]
    assert restored.decisions["waits"] == 1 and restored.decisions["applied"] == 1
    _train(model, optimizer, session, 4)
    session.close()
    summary = session.summary()
    assert summary.seeds[0].fate == "culled" and summary.seeds[0].stages[-1][1] == 10
    # FLOPs of the steps before the checkpoint travelled with it.
    assert summary.host_flops == pytest.approx(
        FORWARDS_PER_STEP * BATCH * HOST_FLOPS_PER_EXAMPLE * 10)


def test_end_epoch_refuses_unknown_metric_keys() -> None:
    model = _model()
    optimizer, session = _attach(model, "none")
    for bad in ({"loss": 0.5}, {"val_loss": 0.5, "accuracy": 0.9}, {"val_acc": 0.9}):
        with pytest.raises(ValueError, match=r"unknown metric keys .*known: \['val_loss', "
                                             r"'val_accuracy'\]"):
            session.end_epoch(bad)
    assert session.model.epoch == 0  # refused before anything happened
    session.end_epoch({"val_loss": 0.5})
    session.end_epoch()
    assert session.model.epoch == 2
    session.close()


def test_the_summary_says_how_many_telemetry_events_were_dropped(monkeypatch) -> None:
    from esper.tolaria import telemetry as telemetry_mod

    # Nothing listens on port 1: every event stays buffered, and close() gives up on them.
    monkeypatch.setattr(telemetry_mod, "CLOSE_FLUSH_S", 0.2)
    telemetry = telemetry_mod.Telemetry("summary-run", bootstrap="127.0.0.1:1")
    model = _model()
    optimizer, session = _attach(model, "none", telemetry=telemetry)
    _train(model, optimizer, session, 6)
    session.close()
    summary = session.summary()
    assert telemetry.published > 0
    assert summary.telemetry_dropped == telemetry.published == summary["telemetry_dropped"]
    assert (f"telemetry: {telemetry.published:,} events dropped, never sent to the broker"
            in str(summary))


def test_a_run_that_lost_no_telemetry_has_no_telemetry_line() -> None:
    model = _model()
    optimizer, session = _attach(model, "none")
    _train(model, optimizer, session, 2)
    session.close()
    assert session.summary().telemetry_dropped == 0
    assert "telemetry" not in str(session.summary())


class _Recording(ReplayPolicy):
    """The replayed decisions, keeping every snapshot the session sends."""

    def __init__(self, decisions) -> None:
        super().__init__(decisions)
        self.snapshots = []

    def observe(self, snapshot) -> None:
        self.snapshots.append(snapshot)
        super().observe(snapshot)


def test_snapshots_carry_the_model_forward_flops_per_example() -> None:
    """ResourceState.model_flops_per_example: the host's per-example forward FLOPs until a
    seed computes, then the host's and the seed's (what a policy prices kernels against)."""
    model = _model()
    policy = _Recording(DECISIONS[:3])  # germinate slot 0 at step 2, TRAINING at step 4
    optimizer, session = _attach(model, policy)
    _train(model, optimizer, session, 8)
    per_step = {s.step: s.resources.model_flops_per_example for s in policy.snapshots}
    assert per_step[2] == pytest.approx(HOST_FLOPS_PER_EXAMPLE)
    seed_weights = sum(p.numel() for p in session.model.slot("0").seed.parameters() if p.dim() == 2)
    assert per_step[8] == pytest.approx(HOST_FLOPS_PER_EXAMPLE + 2 * seed_weights)
    session.close()


def test_snapshots_carry_the_training_flops_spent_and_per_step() -> None:
    """ResourceState.training_flops: the FLOPs of every step so far (what the summary
    totals), and training_flops_per_step: a step's cost now (3 forwards of the batch), both
    growing with the seed once it computes; a training-FLOPs budget is projected on them."""
    model = _model()
    policy = _Recording(DECISIONS[:3])  # germinate slot 0 at step 2, TRAINING at step 4
    optimizer, session = _attach(model, policy)
    _train(model, optimizer, session, 8)
    res = {s.step: s.resources for s in policy.snapshots}
    host_step = 3 * BATCH * HOST_FLOPS_PER_EXAMPLE
    assert res[2].training_flops_per_step == pytest.approx(host_step)
    assert res[2].training_flops == pytest.approx(2 * host_step)
    grown = 3 * BATCH * res[8].model_flops_per_example
    assert res[8].training_flops_per_step == pytest.approx(grown) and grown > host_step
    summary = session.summary()
    assert res[8].training_flops == pytest.approx(summary.host_flops + summary.seed_flops)
    session.close()


@pytest.mark.parametrize(("budget", "field"), [
    (ResourceBudget(max_training_flops=1e12), "budget.planned_steps: must be > 0"),
    (ResourceBudget(max_training_flops=-1.0, planned_steps=10), "budget.max_training_flops"),
    (ResourceBudget(max_training_flops=math.nan, planned_steps=10), "budget.max_training_flops"),
    (ResourceBudget(max_risk=1.5), "budget.max_risk"),
])
def test_attach_refuses_a_budget_that_breaks_the_rule(budget, field) -> None:
    """The rule Tamiyo applies to a session's budget (esper.leyline.budget), checked at
    attach before the model is wrapped: the caller's model is left as it was."""
    model = _model()
    with pytest.raises(ValueError, match=field):
        _attach(model, "none", budget=budget)
    assert not isinstance(model, MorphableModel)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_transformer_host_is_counted_whole() -> None:
    """Measured without gradients, an eval-mode nn.TransformerEncoderLayer takes its fused
    fast path, which FlopCounterMode cannot see; the meter must count the blocks too."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True),
        torch.nn.Linear(16, 4))
    x = torch.randn(BATCH, 8, 16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    session = attach(model, optimizer, "none", example_input=x[:2],
                     config=TolariaConfig(run_id="flops-transformer", progress=False))
    out = session.model(x)
    loss = out.pow(2).mean()
    loss.backward()
    optimizer.step()
    session.step(loss)
    with FlopCounterMode(display=False) as counter:  # a training-mode forward of one example
        model(x[:1])
    assert session.flops.forward_per_example() == pytest.approx(counter.get_total_flops())
    assert session.flops.forward_per_example() > 2 * 8 * 16 * 4 * 10  # far more than the head
    session.close()
