"""One rank of the distributed Tolaria tests (tests/unit/test_tolaria_distributed.py and
tests/integration/test_tolaria_distributed_remote.py): a tiny MLP trained with the hook
API under DistributedDataParallel (gloo, CPU), started by torch.multiprocessing.spawn.

Every rank takes its equal share of the same global batch of each step, so a run on N
ranks computes what one process computes on the whole batch. The loop is a user's plain
DDP loop; the only Esper calls are attach, step, end_epoch, save_checkpoint and close.
Each rank writes what it ended with (a digest of every tensor of the model's state_dict,
its seed transitions, the acks it saw, rank 0's snapshots) to `<out>/rank<r>.json` and the
tensors to `<out>/rank<r>.pt`."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, WidenStreamAction
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import (
    LOCAL_HEURISTIC,
    LocalPolicy,
    ReplayPolicy,
    TolariaConfig,
    attach,
    ddp_model,
    save_checkpoint,
)
from esper.tolaria.policy.remote import RemotePolicy

S = SeedStage
GLOBAL_BATCH = 32
VAL_SIZE = 64
IN, WIDTH, OUT = 8, 16, 4
SLOTS = ["0", "2"]
# Collectives give up after this long (a rank that died leaves the others waiting).
PG_TIMEOUT = datetime.timedelta(seconds=60)
# Heuristic thresholds short enough for a seed's whole life in a few hundred steps.
SHORT_HEURISTIC = dict(plateau_patience=1, training_steps=6, blend_steps=6, shadow_steps=4,
                       probation_steps=6, decision_horizon_steps=40, gate_retry_steps=4,
                       wait_steps=2)


@dataclasses.dataclass
class RunSpec:
    out: str
    world: int
    policy: str = "scripted"  # scripted | replay | local | remote
    decisions: str = ""  # replay: a decisions.json a scripted run wrote
    steps: int = 80  # with stop_after_seed: the most steps
    epoch_steps: int = 10
    run_id: str = "run-ddp"
    init_file: str = ""
    tamiyo: str = ""
    urza: str = ""
    wrap_after_attach: bool = False  # DDP(session.model) instead of attach(DDP(model))
    flat_validation: bool = False  # a constant val loss: the heuristic sees a plateau
    stop_after_seed: int = 0  # end this many steps after the first seed ended
    checkpoint_at: int = 0  # save a checkpoint after this step (an epoch end)
    resume: str = ""
    diverge_at: int = 0  # rank 1 renames its live seed after this step (a broken replica)
    trainer: bool = False  # the Trainer owns the loop (DistributedSampler, DDP model)
    stream: bool = False  # a small transformer whose residual stream widens twice


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, OUT))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, IN, generator=gen)
    return x, x[:, :OUT].argmax(-1)


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    size = t.shape[0] // world
    return t[rank * size:(rank + 1) * size]


def digests(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in state.items()}


def run(rank: int, spec: RunSpec) -> None:
    """Entry point of one rank (torch.multiprocessing.spawn's signature)."""
    torch.set_num_threads(1)
    out = Path(spec.out)
    try:
        if spec.world > 1:
            dist.init_process_group("gloo", init_method=f"file://{spec.init_file}", rank=rank,
                                    world_size=spec.world, timeout=PG_TIMEOUT)
        work = {(True, False): _fit, (True, True): _fit_stream, (False, True): _train_stream}
        result = work.get((spec.trainer, spec.stream), _train)(rank, spec, out)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if spec.world > 1:
        _leave()


def _leave() -> None:
    """A spawned rank's end, once its result is written: the process group destroyed, then
    an immediate exit. In a full test run a rank has aborted in interpreter teardown
    ("terminate called without an active exception", SIGABRT: a C++ thread still
    joinable as the process exits), which failed a run whose ranks had all finished;
    os._exit skips that teardown (the result file is closed, nothing else is pending)."""
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _policy(spec: RunSpec):
    if spec.policy == "scripted":
        from tests.unit.test_tolaria_lifecycle import ScriptedPolicy

        return ScriptedPolicy(PLANS)
    if spec.policy == "replay":
        log = json.loads(Path(spec.decisions).read_text())
        return ReplayPolicy(AdaptationDecision.FromString(bytes.fromhex(d)) for d in log)
    if spec.policy == "local":
        return LocalPolicy(config=dataclasses.replace(LOCAL_HEURISTIC, **SHORT_HEURISTIC))
    return RemotePolicy(spec.tamiyo)


# Slot "0": a LoRA seed taken to FOSSILIZED (merged into the host's weights); slot "2": an
# LayerNorm seed culled while BLENDING, then another fossilized (a residual seed, not
# merged).
PLANS = {"0": ("BP-LORA-R8@1.0.0", [S.SEED_STAGE_FOSSILIZED]),
         "2": ("BP-NORM-LAYER@1.0.0", [S.SEED_STAGE_BLENDING, S.SEED_STAGE_FOSSILIZED])}


def _train(rank: int, spec: RunSpec, out: Path) -> dict:
    model = make_model()
    net = DDP(model) if spec.world > 1 and not spec.wrap_after_attach else model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    policy = _policy(spec)
    session = attach(net, optimizer, policy, slots=SLOTS, example_input=torch.zeros(2, IN),
                     urza=spec.urza or None, resume=spec.resume or None,
                     config=TolariaConfig(run_id=spec.run_id, snapshot_every=2, progress=False,
                                          on_outage="none"))
    if spec.policy == "scripted":
        policy.kernels = session.local_kernels
    if spec.world > 1 and spec.wrap_after_attach:
        net = DDP(session.model)
    acks, snapshots = [], []
    session.ack_listeners.append(lambda a: acks.append(
        [a.decision_id, AckStatus.Name(a.status), a.seed_id, a.step]))
    if rank == 0 and session.policy is not None:
        observe = session.policy.observe
        session.policy.observe = lambda snap: (snapshots.append(
            [snap.step, snap.metrics.train_loss, snap.metrics.train_accuracy,
             snap.metrics.val_loss]), observe(snap))
    ended_at, kernels = None, set()  # kernels: those of every seed seen at a step's end
    step = session.model.global_step
    while step < spec.steps:
        x, y = (shard(t, rank, spec.world) for t in global_batch(step))
        optimizer.zero_grad()
        output = net(x)
        loss = F.cross_entropy(output, y)
        loss.backward()
        # Over every param group, seeds' included: their gradients must already be the
        # ranks' average here, or each rank would clip by another norm.
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 5.0)
        optimizer.step()
        step += 1
        last = step % spec.epoch_steps == 0
        session.step(loss, output, y, last_in_epoch=last)
        if last:
            session.end_epoch(_validate(net, rank, spec))
        kernels |= {s.record.kernel_id for s in session.model.esper_slots.values()
                    if s.record.kernel_id}
        if spec.checkpoint_at == step:
            save_checkpoint(out / "run.pt", session, {"step": step})
        if spec.diverge_at == step and rank == 1:
            _break_replica(session)
        if spec.stop_after_seed:
            ended_at = ended_at or _seed_ended(session, step)
            if ended_at and step >= ended_at + spec.stop_after_seed:
                break
    session.close()
    if spec.policy == "scripted" and rank == 0:  # the decision log, for replays
        (out / "decisions.json").write_text(json.dumps(
            [d.SerializeToString().hex() for d in policy.issued]))
    state = session.model.state_dict()
    torch.save({k: v.detach().clone() for k, v in state.items()}, out / f"rank{rank}.pt")
    return {
        "digests": digests(state),
        "transitions": [[t.slot_id, t.seed_id, S.Name(t.from_stage), S.Name(t.to_stage), t.step]
                        for t in session.model.transitions],
        "acks": acks, "snapshots": snapshots, "steps": step,
        "summary": {k: session.summary()[k] for k in ("seeds_germinated", "seeds_fossilized",
                                                     "seeds_culled")},
        "connects": getattr(policy, "connects", None),
        # What DDP left to Tolaria when it wrapped session.model: the slots' tensors.
        "ddp_ignored": sorted(getattr(net, "parameters_to_ignore", ())),
        "kernels": sorted(kernels),
    }


def _fit(rank: int, spec: RunSpec, out: Path) -> dict:
    """The Trainer with a DDP model and DistributedSampler-fed loaders, unchanged from a
    single-process run but for those two."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from esper.tolaria import Trainer

    batches = [global_batch(step) for step in range(spec.epoch_steps)]
    data = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    sampler = DistributedSampler(data, num_replicas=spec.world, rank=rank, seed=0)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // spec.world, sampler=sampler)
    val = TensorDataset(*global_batch(-1))
    val_loader = DataLoader(val, batch_size=16, sampler=DistributedSampler(
        val, num_replicas=spec.world, rank=rank, shuffle=False))
    policy = _policy(spec)
    trainer = Trainer(DDP(make_model()), lambda params: torch.optim.SGD(params, lr=0.1),
                      loader, val_loader, epochs=spec.steps // spec.epoch_steps,
                      policy=policy, slots=SLOTS, example_input=torch.zeros(2, IN),
                      config=TolariaConfig(run_id=spec.run_id, snapshot_every=2, progress=False),
                      checkpoint_path=str(out / "fit-{epoch}.pt"))
    policy.kernels = trainer.session.local_kernels
    trainer.fit()
    session = trainer.session
    state = session.model.state_dict()
    return {"digests": digests(state), "steps": session.model.global_step,
            "transitions": [[t.slot_id, t.seed_id, S.Name(t.from_stage), S.Name(t.to_stage),
                             t.step] for t in session.model.transitions],
            "acks": [], "epochs": len(trainer.history),
            "summary": {k: session.summary()[k] for k in (
                "seeds_germinated", "seeds_fossilized", "seeds_culled")}}


# The stream host's widenings: (issued at step, features): 8 -> 10 -> 12.
WIDENINGS = [(3, 2), (9, 2)]


def _stream_host() -> nn.Module:
    """A pre-norm transformer (tests/unit/test_kasmina_stream.py's) with one layer off the
    stream after its head, which DDP keeps while Tolaria averages the stream."""
    from tests.unit.test_kasmina_stream import Tiny

    class Host(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(self.head.out_features, self.head.out_features)

        def forward(self, x):
            return self.out(super().forward(x))

    torch.manual_seed(0)
    return Host()


def _tokens(step: int) -> torch.Tensor:
    from tests.unit.test_kasmina_stream import SEQ, VOCAB

    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(2000 + step))


def _train_stream(rank: int, spec: RunSpec, out: Path) -> dict:
    """The user's loop around a transformer whose stream widens (rank 0's ReplayPolicy):
    DDP(session.model) after attach (`ddp_model`), or a DDP built before attach."""
    host = _stream_host()
    before = spec.world > 1 and not spec.wrap_after_attach
    optimizer = torch.optim.SGD(host.parameters(), lr=0.1, momentum=0.9)
    policy = ReplayPolicy(AdaptationDecision(
        decision_id=f"widen-{i}", issued_at_step=step, expires_at_step=step + 100,
        widen_stream=WidenStreamAction(features=k)) for i, (step, k) in enumerate(WIDENINGS))
    wrapped = DDP(host) if before else None  # a user who wrapped first runs that DDP
    session = attach(wrapped or host, optimizer, policy, slots=[],
                     example_input=_tokens(-1)[:2], resume=spec.resume or None,
                     config=TolariaConfig(run_id=spec.run_id, snapshot_every=2, progress=False,
                                          on_outage="none"))
    net = wrapped or (ddp_model(session) if spec.world > 1 else session.model)
    acks = []
    session.ack_listeners.append(lambda a: acks.append([a.decision_id, AckStatus.Name(a.status), a.reason]))
    for step in range(session.model.global_step, spec.steps):
        tokens = shard(_tokens(step), rank, spec.world)
        optimizer.zero_grad()
        logits = net(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        loss.backward()
        optimizer.step()
        last = (step + 1) % spec.epoch_steps == 0
        session.step(loss, logits, tokens, last_in_epoch=last)
        if last:
            session.end_epoch({"val_loss": loss.item()})
        if spec.checkpoint_at == step + 1:
            save_checkpoint(out / "run.pt", session, {"step": step + 1})
    session.close()
    state = session.model.state_dict()
    torch.save({k: v.detach().clone() for k, v in state.items()}, out / f"rank{rank}.pt")
    return {"digests": digests(state), "acks": acks, "width": session.model.stream.width,
            "ddp": type(net).__name__, "ddp_ignored": sorted(getattr(net, "parameters_to_ignore", ()))}


def _fit_stream(rank: int, spec: RunSpec, out: Path) -> dict:
    """The Trainer given DDP(host) of a host with a stream: it rewraps it after attach."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from esper.tolaria import Trainer

    data = TensorDataset(*(torch.cat([_tokens(step) for step in range(spec.epoch_steps)]),) * 2)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // spec.world,
                        sampler=DistributedSampler(data, num_replicas=spec.world, rank=rank, seed=0))
    policy = ReplayPolicy(AdaptationDecision(
        decision_id=f"widen-{i}", issued_at_step=step, expires_at_step=step + 100,
        widen_stream=WidenStreamAction(features=k)) for i, (step, k) in enumerate(WIDENINGS))
    trainer = Trainer(DDP(_stream_host()), lambda params: torch.optim.SGD(params, lr=0.1), loader,
                      epochs=spec.steps // spec.epoch_steps, policy=policy, slots=[],
                      loss_fn=lambda logits, t: F.cross_entropy(logits.flatten(0, 1), t.flatten()),
                      example_input=_tokens(-1)[:2],
                      config=TolariaConfig(run_id=spec.run_id, snapshot_every=2, progress=False))
    trainer.fit()
    state = trainer.session.model.state_dict()
    return {"digests": digests(state), "width": trainer.session.model.stream.width,
            "acks": [[d, AckStatus.Name(a.status)] for d, a in sorted(policy.acks.items())],
            "ddp": type(trainer.model).__name__}


def _validate(net: nn.Module, rank: int, spec: RunSpec) -> dict:
    if spec.flat_validation:
        return {"val_loss": 1.0, "val_accuracy": 0.5}
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(VAL_SIZE, IN, generator=gen)
    x, y = shard(x, rank, spec.world), shard(x[:, :OUT].argmax(-1), rank, spec.world)
    net.eval()
    with torch.no_grad():
        out = net(x)
    net.train()
    return {"val_loss": float(F.cross_entropy(out, y)),
            "val_accuracy": float((out.argmax(-1) == y).float().mean())}


def _seed_ended(session, step: int) -> int | None:
    """`step` once a seed was fossilized or culled (every rank sees the same seed states,
    so every rank stops at the same step)."""
    ended = [t for t in session.model.transitions if t.to_stage in
             (S.SEED_STAGE_FOSSILIZED, S.SEED_STAGE_CULLED)]
    return step if ended else None


def _break_replica(session) -> None:
    """Rank 1 renames a live seed behind rank 0's back (its state alone, so every
    collective still lines up): the next safe point must refuse to go on."""
    live = [s for s in session.model.esper_slots.values() if s.is_live()]
    live[0].record.seed_id = "seed-tampered"
