"""EsperCallback: a real PyTorch Lightning Trainer (CPU) on digits grows a seed through
germination to fossilization, driven by a scripted policy through the callback alone."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional as F
from torch.optim import lr_scheduler

pl = pytest.importorskip("pytorch_lightning")

from esper.kasmina import KasminaConfig  # noqa: E402
from esper.leyline.lifecycle import next_stage  # noqa: E402
from esper.leyline.v1.control_pb2 import (  # noqa: E402
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    FossilizeAction,
    GerminateAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage  # noqa: E402
from esper.tolaria import TolariaConfig  # noqa: E402
from esper.tolaria.lightning import EsperCallback  # noqa: E402
from esper.tolaria.optim import SEED_GROUP_KEY  # noqa: E402
from esper.tolaria.tasks import load_task  # noqa: E402

S = SeedStage
# An MLP seed is not affine, so its fossil stays a residual module: unwrap() grows. It is
# 85% of the host's size, so the seed budget is raised.
BLUEPRINT = "BP-MLP-GELU@1.0.0"
KASMINA = KasminaConfig(max_seed_param_fraction=1.0)
SLOT = "fc1"
SCHEDULE = BlendSchedule(training_steps=4, blend_steps=4, shadow_steps=2, probation_steps=2,
                         learning_rate=0.02)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class GrowOne:
    """A PolicySource that grows one seed in SLOT to FOSSILIZED: germinate when dormant,
    then advance (re-issued at each snapshot until the gate passes), then fossilize."""

    name = "grow-one"

    def __init__(self, until: int = S.SEED_STAGE_FOSSILIZED, blueprint: str = BLUEPRINT,
                 schedule: BlendSchedule = SCHEDULE, slot: str = SLOT) -> None:
        self.until, self.blueprint, self.schedule = until, blueprint, schedule
        self.slot_id = slot
        self.ids = (f"d-{i}" for i in itertools.count())
        self.callback: EsperCallback | None = None  # for the session's local kernels
        self.queue: list[AdaptationDecision] = []
        self.issued: list[AdaptationDecision] = []
        self.acks: dict = {}
        self.snapshot_steps: list[int] = []
        self.epoch_end_steps: list[int] = []

    def start(self, open_message):
        self.slot = next(s for s in open_message.graph.slots if s.slot_id == self.slot_id)

    def snapshot_every(self):
        return None

    def observe(self, snap):
        self.snapshot_steps.append(snap.step)
        if snap.epoch_end:
            self.epoch_end_steps.append(snap.step)
        seed = next(s for s in snap.seeds if s.slot_id == self.slot_id)
        action = {}
        if seed.stage == S.SEED_STAGE_DORMANT and not self.issued:
            cand = self.callback.session.local_kernels.find(self.blueprint, self.slot.shape)
            action["germinate"] = GerminateAction(
                slot_id=self.slot_id, blueprint_ref=self.blueprint,
                kernel_id=cand.kernel.kernel_id,
                kernel_sha256=cand.kernel.sha256, schedule=self.schedule)
        elif seed.stage in (S.SEED_STAGE_DORMANT, self.until):
            pass
        elif seed.stage == S.SEED_STAGE_PROBATIONARY:
            action["fossilize"] = FossilizeAction(slot_id=self.slot_id)
        elif seed.stage != S.SEED_STAGE_FOSSILIZED:
            action["advance"] = AdvanceAction(slot_id=self.slot_id,
                                              target_stage=next_stage(seed.stage))
        if action:
            d = AdaptationDecision(decision_id=next(self.ids), issued_at_step=snap.step,
                                   expires_at_step=snap.step + 20, **action)
            self.issued.append(d)
            self.queue.append(d)

    def decisions(self):
        out, self.queue = self.queue, []
        return out

    def acked(self, ack):
        self.acks[ack.decision_id] = ack

    def field_report(self, report):
        pass

    def outage(self):
        return None

    def close(self):
        pass


class DigitsModule(pl.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float = 0.05) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        return {"loss": F.cross_entropy(out, y), "outputs": out.detach(), "targets": y}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_accuracy", (out.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Watch(pl.Callback):
    """Records, after every training batch, the optimizer's seed groups and the seed's
    parameters as first seen in the optimizer."""

    def __init__(self, esper: EsperCallback) -> None:
        self.esper = esper
        self.groups_seen: list[tuple] = []
        self.seed_params: list[torch.nn.Parameter] = []
        self.seed_initial: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.groups_seen.append(tuple(g.get(SEED_GROUP_KEY) for g in opt.param_groups))
        group = next((g for g in opt.param_groups if g.get(SEED_GROUP_KEY) == SLOT), None)
        if group is not None and not self.seed_params:
            self.seed_params = list(group["params"])
            self.seed_initial = [p.detach().clone() for p in self.seed_params]


def _trainer(callbacks, **kw) -> pl.Trainer:
    settings = dict(accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
                    enable_checkpointing=False, enable_model_summary=False,
                    limit_train_batches=20, max_epochs=6)
    settings.update(kw)
    return pl.Trainer(callbacks=callbacks, **settings)


def _task():
    # The wide host, as the lifecycle tests: the scripted gates were tuned on it.
    return load_task("digits", batch_size=32, seed=0, host="wide")


def test_lightning_fit_germinates_trains_and_fossilizes_a_seed() -> None:
    pl.seed_everything(0, workers=True)
    task = _task()
    policy = GrowOne()
    esper = EsperCallback(policy, module="net", slots=[SLOT], example_input=task.example_input,
                          kasmina=KASMINA, config=TolariaConfig(snapshot_every=2, progress=False))
    policy.callback = esper
    watch = Watch(esper)
    lit = DigitsModule(task.model)
    host_params = sum(p.numel() for p in task.model.parameters())
    trainer = _trainer([esper, watch])
    trainer.fit(lit, task.train_loader, task.val_loader)

    session = esper.session
    slot = session.model.slot(SLOT)
    # The seed went through germination to fossilization, each decision acked once.
    stages = [(e.from_stage, e.to_stage) for e in session.model.transitions]
    assert (S.SEED_STAGE_DORMANT, S.SEED_STAGE_GERMINATED) in stages
    assert stages[-1] == (S.SEED_STAGE_PROBATIONARY, S.SEED_STAGE_FOSSILIZED), stages
    assert slot.stage == S.SEED_STAGE_FOSSILIZED and not slot.record.merged
    assert set(policy.acks) == {d.decision_id for d in policy.issued}
    # Its parameters were in the optimizer Lightning stepped, and training changed them.
    assert watch.seed_params, "the seed never had a param group in trainer.optimizers[0]"
    assert {id(p) for p in watch.seed_params} == {id(p) for p in slot.seed.parameters()}
    assert any(not torch.equal(p.detach(), p0)
               for p, p0 in zip(watch.seed_params, watch.seed_initial, strict=True))
    assert any(SLOT in groups for groups in watch.groups_seen)
    # The fossil is merged into the grown model: a plain module with more parameters.
    grown = session.model.unwrap()
    assert sum(p.numel() for p in grown.parameters()) > host_params
    x, _ = next(iter(task.val_loader))
    with torch.no_grad():
        torch.testing.assert_close(grown(x), lit(x))
    # The loop calls: one session.step per optimizer step, one end_epoch per epoch (the
    # sanity-check validation is not one), with the logged validation metrics.
    assert session.model.global_step == trainer.global_step == 6 * 20
    assert session.model.epoch == trainer.current_epoch == 6
    assert policy.epoch_end_steps == [20 * e for e in range(1, 7)]
    assert policy.snapshot_steps == sorted(set(policy.snapshot_steps))  # steps increase
    assert session.metrics.val_loss == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert session.metrics.val_accuracy == pytest.approx(
        float(trainer.callback_metrics["val_accuracy"]))
    summary = session.summary()
    assert summary["seeds_fossilized"] == 1 and summary["step"] == trainer.global_step
    assert session._closed  # on_fit_end closed the session


def test_the_lightning_module_itself_is_wrapped_with_its_example_input_array() -> None:
    """module=None: slots are named in the LightningModule, example_input_array gives the
    activation shapes, and the grown module unwraps to a module computing the same."""
    pl.seed_everything(0, workers=True)
    task = _task()
    lit = DigitsModule(task.model)
    lit.example_input_array = task.example_input
    policy = GrowOne(slot="net.fc1")
    esper = EsperCallback(policy, slots=["net.conv1", "net.fc1"], kasmina=KASMINA,
                          config=TolariaConfig(snapshot_every=2, progress=False))
    policy.callback = esper
    trainer = _trainer([esper], max_epochs=2)
    trainer.fit(lit, task.train_loader, task.val_loader)
    session = esper.session
    assert session.model.host is lit
    conv = session.model.slot("net.conv1").shape
    assert (conv.height, conv.width) == (8, 8)  # read from a forward of example_input_array
    assert session.model.slot("net.fc1").stage == S.SEED_STAGE_FOSSILIZED
    grown = session.model.unwrap()
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in lit.parameters())
    x, _ = next(iter(task.val_loader))
    with torch.no_grad():
        torch.testing.assert_close(grown(x), lit(x))


def test_mixed_precision_and_gradient_clipping() -> None:
    """bf16 autocast (the CPU's mixed precision) and Lightning's gradient clipping, which
    clips the optimizer's groups, seed group included, through a fossilization."""
    pl.seed_everything(0, workers=True)
    task = _task()
    policy = GrowOne()
    esper = EsperCallback(policy, module="net", slots=[SLOT], example_input=task.example_input,
                          kasmina=KASMINA, config=TolariaConfig(snapshot_every=2, progress=False))
    policy.callback = esper
    trainer = _trainer([esper], max_epochs=2, precision="bf16-mixed", gradient_clip_val=0.01)
    trainer.fit(DigitsModule(task.model), task.train_loader, task.val_loader)
    session = esper.session
    assert session.model.slot(SLOT).stage == S.SEED_STAGE_FOSSILIZED
    assert math.isfinite(session.metrics.val_loss)
    assert session.model.global_step == trainer.global_step == 40
    # The last step's gradients, clipped together: the seed group's are among them.
    groups = trainer.optimizers[0].param_groups
    seed_grads = [p.grad for g in groups if g.get(SEED_GROUP_KEY) == SLOT for p in g["params"]]
    assert seed_grads and all(grad is not None for grad in seed_grads)
    total = torch.stack([p.grad.norm() for g in groups for p in g["params"]
                         if p.grad is not None]).norm()
    assert total <= 0.01 * 1.001


class TwoOptimizers(DigitsModule):
    """Manual optimization: the convolutions and the classifier have their own optimizers."""

    def __init__(self, net):
        super().__init__(net)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        convs, head = self.optimizers()
        x, y = batch
        out = self(x)
        loss = F.cross_entropy(out, y)
        convs.zero_grad()
        head.zero_grad()
        self.manual_backward(loss)
        convs.step()
        head.step()
        return loss

    def configure_optimizers(self):
        convs = [p for n, p in self.net.named_parameters() if n.startswith("conv")]
        head = [p for n, p in self.net.named_parameters() if not n.startswith("conv")]
        return torch.optim.SGD(convs, lr=0.05), torch.optim.Adam(head, lr=1e-3)


def test_seed_groups_go_to_the_chosen_optimizer_with_accumulation_counted_once() -> None:
    pl.seed_everything(0, workers=True)
    task = _task()
    policy = GrowOne()
    esper = EsperCallback(policy, module="net", optimizer=1, slots=[SLOT],
                          example_input=task.example_input, kasmina=KASMINA,
                          config=TolariaConfig(snapshot_every=2, progress=False))
    policy.callback = esper
    lit = TwoOptimizers(task.model)
    trainer = _trainer([esper], max_epochs=1, limit_train_batches=10, limit_val_batches=2)
    trainer.fit(lit, task.train_loader, task.val_loader)
    convs, head = trainer.optimizers
    # Seed groups were added to the second optimizer only.
    assert esper.session.optimizer is head
    assert not any(SEED_GROUP_KEY in g for g in convs.param_groups)
    assert any(d.WhichOneof("action") == "germinate" for d in policy.issued)
    # Manual optimization with two optimizers: global_step counts both; one session step
    # per batch.
    assert esper.session.model.global_step == 10 and trainer.global_step == 20
    assert esper.session.model.epoch == 1

    # Gradient accumulation: one session step per optimizer step, with that batch's loss.
    pl.seed_everything(0, workers=True)
    task = _task()
    esper = EsperCallback("none", module="net", example_input=task.example_input,
                          config=TolariaConfig(snapshot_every=2, progress=False))
    spy = StepSpy(esper)
    lit = RecordingLosses(task.model)
    trainer = _trainer([esper, spy], max_epochs=2, limit_train_batches=9, limit_val_batches=2,
                       accumulate_grad_batches=3)
    trainer.fit(lit, task.train_loader, task.val_loader)
    assert esper.session.model.global_step == trainer.global_step == 6
    stepping = [loss for epoch in lit.losses for i, loss in enumerate(epoch) if i % 3 == 2]
    assert spy.losses == pytest.approx(stepping)
    assert spy.last_in_epoch == [False, False, True] * 2


class RecordingLosses(DigitsModule):
    """Keeps every training batch's loss, per epoch."""

    def __init__(self, net):
        super().__init__(net)
        self.losses: list[list[float]] = []

    def on_train_epoch_start(self):
        self.losses.append([])

    def training_step(self, batch, batch_idx):
        result = super().training_step(batch, batch_idx)
        self.losses[-1].append(float(result["loss"].detach()))
        return result


class StepSpy(pl.Callback):
    """Records the arguments of every session.step the EsperCallback makes."""

    def __init__(self, esper: EsperCallback) -> None:
        self.esper = esper
        self.losses: list[float] = []
        self.last_in_epoch: list[bool] = []

    def on_train_start(self, trainer, pl_module):
        session = self.esper.session
        step = session.step

        def spy(loss, outputs=None, targets=None, *, last_in_epoch=False):
            self.losses.append(float(loss))
            self.last_in_epoch.append(last_in_epoch)
            step(loss, outputs, targets, last_in_epoch=last_in_epoch)

        session.step = spy


class Scheduled(DigitsModule):
    """configure_optimizers returns a learning-rate scheduler, as Lightning users do."""

    def __init__(self, net, kind: str, total_steps: int) -> None:
        super().__init__(net)
        self.kind, self.total_steps = kind, total_steps

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if self.kind == "OneCycleLR":
            scheduler = lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=self.total_steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        # min_lr as a list: the form that refuses a param group count it was not built with.
        scheduler = lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, min_lr=[1e-4])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


class Rates(pl.Callback):
    """After every training batch: (host lr, seed group lr or None)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        seed = [g["lr"] for g in groups if g.get(SEED_GROUP_KEY) == SLOT]
        self.seen.append((groups[0]["lr"], seed[0] if seed else None))


@pytest.mark.parametrize("kind", ["OneCycleLR", "ReduceLROnPlateau"])
def test_lightning_schedulers_follow_seed_groups(kind) -> None:
    """A scheduler from configure_optimizers keeps stepping while a seed group comes and
    goes (LoRA: merged, so its group is removed, on fossilization); the seed group, with
    no rate of its own, follows the host's schedule."""
    pl.seed_everything(0, workers=True)
    task = _task()
    epochs, batches = 4, 20
    policy = GrowOne(blueprint="BP-LORA-R8@1.0.0", schedule=BlendSchedule(
        training_steps=4, blend_steps=4, shadow_steps=2, probation_steps=2))
    esper = EsperCallback(policy, module="net", slots=[SLOT], example_input=task.example_input,
                          config=TolariaConfig(snapshot_every=2, progress=False))
    policy.callback = esper
    rates = Rates()
    trainer = _trainer([esper, rates], max_epochs=epochs, limit_train_batches=batches,
                       limit_val_batches=2)
    trainer.fit(Scheduled(task.model, kind, epochs * batches + 1),
                task.train_loader, task.val_loader)
    slot = esper.session.model.slot(SLOT)
    assert slot.stage == S.SEED_STAGE_FOSSILIZED and slot.record.merged
    with_seed = [(host, seed) for host, seed in rates.seen if seed is not None]
    assert with_seed and rates.seen[-1][1] is None  # the group came, then went on merge
    assert all(seed == pytest.approx(host) for host, seed in with_seed)
    assert len({host for host, _ in rates.seen}) > 1  # the scheduler did move the rate
    assert esper.session.model.global_step == trainer.global_step == epochs * batches


class AtTrainStart(pl.Callback):
    """Runs `fn(trainer, pl_module)` once training starts (after a checkpoint restore)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def on_train_start(self, trainer, pl_module):
        self.fn(trainer, pl_module)


def test_lightning_checkpoint_resumes_live_seeds(tmp_path) -> None:
    """A ModelCheckpoint taken with a seed mid-blend resumes, through ckpt_path and a fresh
    EsperCallback, with the seed, its optimizer group and state, and the step counts."""

    def run(max_epochs, ckpt_path=None, extra=()):
        pl.seed_everything(0, workers=True)
        task = _task()
        policy = GrowOne(until=S.SEED_STAGE_BLENDING)
        esper = EsperCallback(policy, module="net", slots=[SLOT], example_input=task.example_input,
                              kasmina=KASMINA,
                              config=TolariaConfig(snapshot_every=2, progress=False))
        policy.callback = esper
        saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / f"run{max_epochs}", save_last=True)
        trainer = _trainer([esper, saver, *extra], max_epochs=max_epochs, limit_train_batches=10,
                           limit_val_batches=2, enable_checkpointing=True)
        lit = DigitsModule(task.model)
        trainer.fit(lit, task.train_loader, task.val_loader, ckpt_path=ckpt_path)
        return esper, lit, trainer, task

    saved = {}

    class AtSave(pl.Callback):
        """The state each checkpoint holds (the fit's end settles live seeds afterwards)."""

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            session = next(c for c in trainer.callbacks if isinstance(c, EsperCallback)).session
            slot = session.model.slot(SLOT)
            saved["stage"] = slot.stage
            with torch.no_grad():
                saved["out"] = pl_module(saved["x"])
            saved["seed"] = {k: v.clone() for k, v in slot.seed.state_dict().items()}
            saved["momentum"] = [session.optimizer.state[p]["momentum_buffer"].clone()
                                 for p in slot.seed.parameters()]

    saved["x"], _ = next(iter(_task().val_loader))
    first, _, _, _ = run(2, extra=[AtSave()])
    assert saved["stage"] == S.SEED_STAGE_BLENDING
    x, saved_out, saved_seed, saved_momentum = (saved[k] for k in ("x", "out", "seed",
                                                                   "momentum"))
    seen = {}

    def check(trainer, pl_module):
        session = seen["esper"].session
        restored = session.model.slot(SLOT)
        seen["stage"] = restored.stage
        seen["run_id"] = session.run_id
        seen["steps"] = (session.model.global_step, trainer.global_step)
        seen["groups"] = [g.get(SEED_GROUP_KEY) for g in trainer.optimizers[0].param_groups]
        for k, v in restored.seed.state_dict().items():
            torch.testing.assert_close(v, saved_seed[k])
        for p, m in zip(restored.seed.parameters(), saved_momentum, strict=True):
            torch.testing.assert_close(trainer.optimizers[0].state[p]["momentum_buffer"], m)
        with torch.no_grad():
            torch.testing.assert_close(pl_module(x), saved_out)
        seen["checked"] = True

    class Grab(AtTrainStart):
        def setup(self, trainer, pl_module, stage):
            seen["esper"] = next(c for c in trainer.callbacks if isinstance(c, EsperCallback))

    second, _, trainer, _ = run(3, ckpt_path=tmp_path / "run2" / "last.ckpt", extra=[Grab(check)])
    assert seen.get("checked")
    assert seen["stage"] == S.SEED_STAGE_BLENDING
    assert seen["run_id"] == first.session.run_id
    assert seen["steps"] == (20, 20)
    assert seen["groups"] == [None, SLOT]
    assert second.session.model.global_step == trainer.global_step == 30
    assert second.session.model.epoch == 3


class Crashes(DigitsModule):
    def training_step(self, batch, batch_idx):
        if self.global_step == 12:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_an_interrupted_fit_closes_the_session_keeping_live_seeds() -> None:
    pl.seed_everything(0, workers=True)
    task = _task()
    policy = GrowOne(until=S.SEED_STAGE_TRAINING)
    esper = EsperCallback(policy, module="net", slots=[SLOT], example_input=task.example_input,
                          kasmina=KASMINA, config=TolariaConfig(snapshot_every=2, progress=False))
    policy.callback = esper
    with pytest.raises(RuntimeError, match="boom"):
        _trainer([esper], max_epochs=1).fit(Crashes(task.model), task.train_loader)
    assert esper.session._closed
    assert esper.session.model.slot(SLOT).stage == S.SEED_STAGE_TRAINING  # not settled
    assert esper.session.model.global_step == 12


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        EsperCallback(optimizer=-1)
    task = _task()
    esper = EsperCallback("none", module="missing")
    with pytest.raises(ValueError, match="no submodule"):
        _trainer([esper], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0).fit(
            DigitsModule(task.model), task.train_loader)
    esper = EsperCallback("none", module="net", optimizer=1)
    with pytest.raises(ValueError, match="gave 1 optimizer"):
        _trainer([esper], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0).fit(
            DigitsModule(task.model), task.train_loader)
    # One fit per callback: a second fit would wrap the model again.
    esper = EsperCallback("none", module="net")
    lit = DigitsModule(task.model)
    _trainer([esper], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0).fit(
        lit, task.train_loader)
    with pytest.raises(RuntimeError, match="one fit"):
        _trainer([esper], max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0).fit(
            lit, task.train_loader)


class SilentManual(TwoOptimizers):
    """Steps its optimizers but returns no loss."""

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)


def test_a_step_without_a_loss_is_refused() -> None:
    task = _task()
    with pytest.raises(ValueError, match="needs the training loss"):
        _trainer([EsperCallback("none", module="net")], max_epochs=1, limit_train_batches=1,
                 num_sanity_val_steps=0).fit(SilentManual(task.model), task.train_loader)
