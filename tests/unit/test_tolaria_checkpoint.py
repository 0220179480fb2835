"""Checkpoint/resume: a run resumed from a checkpoint (at an epoch end, or mid-epoch at a
snapshot step) continues with exactly the losses of the uninterrupted run, with a live
seed in its own param group (momentum state included) and decisions still to come.
CPU, deterministic algorithms."""

from __future__ import annotations

import pickle

import pytest
import torch

from esper.leyline.v1.control_pb2 import (
    AckStatus,
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    FossilizeAction,
    GerminateAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import CheckpointError, ReplayPolicy, TolariaConfig, Trainer, load_checkpoint
from esper.tolaria.tasks import SmallCNN, load_task

S = SeedStage
SNAPSHOT_EVERY = 5
STEPS_PER_EPOCH = 23  # 1,437 training digits in batches of 64
SCHEDULE = BlendSchedule(training_steps=5, blend_steps=10, shadow_steps=5, probation_steps=5,
                         learning_rate=0.02)


@pytest.fixture(autouse=True)
def _deterministic():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])


def _log(kernels) -> list[AdaptationDecision]:
    """Germinate conv2 and lift it through its life, spanning the checkpoints."""
    cand = kernels.find("BP-CONV-SE@1.0.0", kernels_slot_shape["conv2"])
    def d(i, step, **action):
        return AdaptationDecision(decision_id=f"d{i}", issued_at_step=step,
                                  expires_at_step=step + 40, **action)
    def adv(target):
        return AdvanceAction(slot_id="conv2", target_stage=target)
    return [
        d(0, 5, germinate=GerminateAction(
            slot_id="conv2", blueprint_ref="BP-CONV-SE@1.0.0", kernel_id=cand.kernel.kernel_id,
            kernel_sha256=cand.kernel.sha256, schedule=SCHEDULE)),
        d(1, 10, advance=adv(S.SEED_STAGE_TRAINING)),
        d(2, 20, advance=adv(S.SEED_STAGE_BLENDING)),
        d(3, 25, advance=adv(S.SEED_STAGE_BLENDING)),   # retried if G2 refused at 20
        d(4, 45, advance=adv(S.SEED_STAGE_SHADOWING)),
        d(5, 55, advance=adv(S.SEED_STAGE_PROBATIONARY)),
        d(6, 65, fossilize=FossilizeAction(slot_id="conv2")),
    ]


kernels_slot_shape: dict = {}


def _trainer(tmp_path, model_seed: int, **kwargs):
    task = load_task("digits", batch_size=64, seed=0)
    torch.manual_seed(model_seed)
    model = SmallCNN(8)
    losses: list[float] = []

    def loss_fn(out, y):
        loss = torch.nn.functional.cross_entropy(out, y)
        if model.training:
            losses.append(loss.item())
        return loss

    replay = ReplayPolicy([])
    trainer = Trainer(model, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                      task.train_loader, task.val_loader, loss_fn=loss_fn, epochs=3,
                      policy=replay, slots=["conv2", "fc1"], example_input=task.example_input,
                      config=TolariaConfig(snapshot_every=SNAPSHOT_EVERY, progress=False,
                                           run_id="run-ckpt"), **kwargs)
    kernels_slot_shape["conv2"] = trainer.session.model.slot("conv2").shape
    replay.log = _log(trainer.session.local_kernels)  # on resume, its position is restored
    acks: list = []
    trainer.session.ack_listeners.append(acks.append)
    return trainer, losses, acks


def test_resume_gives_the_same_losses(tmp_path) -> None:
    path = str(tmp_path / "ckpt-{step}.pt")
    full, full_losses, full_acks = _trainer(tmp_path, 0, checkpoint_path=path, checkpoint_every=30)
    summary = full.fit()
    assert len(full_losses) == 3 * STEPS_PER_EPOCH
    assert summary["seeds_fossilized"] + summary["seeds_culled"] + summary["live_seeds"] == 1
    applied = [a.decision_id for a in full_acks if a.status == AckStatus.ACK_STATUS_APPLIED]
    assert "d0" in applied and "d1" in applied

    for step in (STEPS_PER_EPOCH, 30):  # an epoch end; mid-epoch 2 with a live seed
        ckpt = tmp_path / f"ckpt-{step}.pt"
        state = load_checkpoint(ckpt)
        assert state["seed_groups"] == ["conv2"]
        resumed, losses, acks = _trainer(tmp_path, model_seed=123, resume=str(ckpt))
        assert resumed.session.model.slot("conv2").seed is not None
        resumed.fit()
        assert losses == full_losses[step:], f"resumed at {step}"
        # No decision is acked twice across the interruption.
        before = {a.decision_id for a in full_acks if a.step <= step}
        assert not before & {a.decision_id for a in acks}


def test_checkpoint_is_plain_data_and_refuses_pickles(tmp_path) -> None:
    full, _, _ = _trainer(tmp_path, 0)
    full.train_epoch()
    path = tmp_path / "c.pt"
    full.save_checkpoint(str(path))
    state = torch.load(path, weights_only=True)  # no custom class anywhere
    assert isinstance(state["pending"], list) and isinstance(state["kasmina"], dict)
    assert state["seed_kernels"]["conv2"]["kernel_digest"]
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": object()}, protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    full.session.close()


@pytest.mark.parametrize("interval,factory", [
    ("step", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3 * STEPS_PER_EPOCH)),
    ("epoch", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)),
])
def test_a_trainer_scheduler_is_stepped_and_resumed(tmp_path, interval, factory) -> None:
    # The seed's decision sets its own rate (SCHEDULE.learning_rate): it keeps it, while the
    # host group follows the scheduler; a resumed run continues both exactly.
    path = str(tmp_path / "ckpt-{step}.pt")
    kwargs = {"scheduler": factory, "scheduler_interval": interval}
    full, full_losses, _ = _trainer(tmp_path, 0, checkpoint_path=path, checkpoint_every=30, **kwargs)
    rates: list[float] = []
    full.session.ack_listeners.append(lambda ack: rates.append(full.optimizer.param_groups[0]["lr"]))
    full.fit()
    host_lr = full.optimizer.param_groups[0]["lr"]
    expected = 0.05 * 0.5 ** 3 if interval == "epoch" else 0.0
    assert host_lr == pytest.approx(expected, abs=1e-12)
    assert len(set(rates)) > 1  # the rate moved during the run
    for step in (STEPS_PER_EPOCH, 30):
        resumed, losses, _ = _trainer(tmp_path, model_seed=123,
                                      resume=str(tmp_path / f"ckpt-{step}.pt"), **kwargs)
        assert resumed.optimizer.param_groups[0]["lr"] != 0.05  # not restarted at its first rate
        resumed.fit()
        assert losses == full_losses[step:], f"resumed at {step}"
        assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(host_lr, abs=1e-12)


def test_trainer_scheduler_settings_are_checked(tmp_path) -> None:
    plateau = lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # noqa: E731
    with pytest.raises(ValueError, match="scheduler_interval"):
        _trainer(tmp_path, 0, scheduler=plateau, scheduler_interval="batch")
    with pytest.raises(TypeError, match="scheduler factory"):
        _trainer(tmp_path, 0, scheduler=lambda opt: opt)
    with pytest.raises(TypeError, match="scheduler must be a factory"):
        _trainer(tmp_path, 0, scheduler=3)
    trainer, _, _ = _trainer(tmp_path, 0, scheduler=plateau)
    trainer.val_loader = None
    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a finite validation loss"):
        trainer.train_epoch()
    saved = str(tmp_path / "with-scheduler.pt")
    trainer, _, _ = _trainer(tmp_path, 0, scheduler=plateau)
    trainer.save_checkpoint(saved)
    with pytest.raises(ValueError, match="pass the same scheduler factory"):
        _trainer(tmp_path, 0, resume=saved)
