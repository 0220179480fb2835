"""Training under torch.distributed: one Tolaria session per rank, replicas in lock-step.

Every rank runs the user's unchanged loop and its own session (`attach` finds the process
group). What keeps the replicas identical:

- **One controller.** Rank 0 alone holds the policy (the one Tamiyo session of the run, or
  the local policy) and publishes telemetry; the other ranks never open a policy.
- **Safe points at the same steps.** Decisions are applied only at safe points (never
  between them, even when a remote decision arrives early), at the cadence rank 0 last
  broadcast, so every rank reaches each safe point at the same step.
- **One set of measurements.** At a safe point the metric window (loss, hits, samples) and
  every slot's seed accumulators are all-reduced, so each rank's snapshot and gate inputs
  describe the global batch; validation metrics are averaged over the ranks that have them.
- **Decided once.** Rank 0 runs the policy and applies the decisions: its gates decide. It
  then broadcasts what it answered (decision and ack, in order), the kernels of the seeds
  it germinated and its seed records. The other ranks apply exactly the decisions rank 0
  applied (with rank 0's seed ids), never one it refused or let expire, then take rank 0's
  records as theirs; they re-run the same deterministic gates on the same numbers, and a
  rank that ever disagrees stops with ReplicaDivergence instead of training on silently.
  A newly germinated seed's weights are broadcast from rank 0.
- **Seeds stay out of DDP's reducer.** DistributedDataParallel fixes its parameter set when
  it is built, and seeds appear, merge and disappear mid-run. So DDP keeps the host's
  parameters (however it was wrapped: the user's model before or after `attach`, or
  `session.model`, whose seed parameters and slot buffers are listed in
  `_ddp_params_and_buffers_to_ignore`), and Tolaria averages the seeds' gradients itself:
  a post-accumulate-grad hook on each seed parameter queues one all-reduce at the end of
  the backward pass (as DDP does), before any gradient clipping or optimizer step. A
  merged fossil changes the host weights in place, identically on every rank, so DDP's
  buckets stay valid and it never needs to be rebuilt.
- **So does a growing residual stream.** Widening the stream replaces its parameters with
  wider ones, which a DDP reducer cannot follow. When DDP wraps `session.model` after
  attach, the stream's parameters are listed for DDP to ignore too and averaged by the
  same end-of-backward all-reduce; a widening (applied by every rank from rank 0's
  decision, its fresh weights drawn from a generator every rank seeds alike) moves the
  hooks to the new parameters, and rank 0's stream weights are broadcast at attach and
  after each widening. A DDP built before attach already holds the stream's parameters:
  then the stream stays at its width, and the refusal says to wrap after attach.

Collectives are tensors only (the broadcast record is JSON in a uint8 tensor): nothing is
unpickled, and a kernel received from rank 0 is verified against its digest.
"""

from __future__ import annotations

import base64
import json
import math
from itertools import chain

import torch
import torch.distributed as dist
from torch import nn

from esper.kasmina.record import SeedRecord
from esper.kasmina.wrap import SLOTS_ATTR, MorphableModel
from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck

LEADER = 0  # the rank that holds the policy, decides the gates and writes checkpoints
# DDP reads this attribute of the module it wraps: names of parameters and buffers it leaves
# alone (torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model).
DDP_IGNORE_ATTR = "_ddp_params_and_buffers_to_ignore"


# Why the stream cannot widen when attach was given a DDP-wrapped model.
STREAM_HELD_BY_DDP = ("the residual stream cannot widen: the DistributedDataParallel built before "
                      "attach holds its parameters; wrap DistributedDataParallel(session.model) "
                      "after attach to let it grow")


class ReplicaDivergence(RuntimeError):
    """A rank reached another seed state than rank 0: training must not go on."""


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module a DistributedDataParallel wraps (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def ddp_model(session, **ddp_kwargs) -> nn.Module:
    """What a rank's loop runs once attached: DistributedDataParallel(session.model,
    **ddp_kwargs) over the parameters Tolaria leaves to DDP, or session.model itself when
    Tolaria averages every one (a host that is all residual stream; DDP refuses a module
    with nothing to hold). Wrapping after attach is what lets the stream widen."""
    from torch.nn.parallel import DistributedDataParallel

    model = session.model
    ignored = set(getattr(model, DDP_IGNORE_ATTR, ()))
    if not any(p.requires_grad and name not in ignored for name, p in model.named_parameters()):
        return model
    return DistributedDataParallel(model, **ddp_kwargs)


def ddp_options(ddp: nn.Module) -> dict:
    """The options of an existing DistributedDataParallel that `ddp_model` can carry over
    (the others take their defaults)."""
    return {name: getattr(ddp, name) for name in (
        "device_ids", "output_device", "dim", "process_group", "find_unused_parameters",
        "gradient_as_bucket_view", "static_graph")}


def process_replicas(ddp_holds_host: bool = False) -> Replicas | None:
    """The Replicas of this process when torch.distributed runs more than one rank;
    `ddp_holds_host`: the model was wrapped in DistributedDataParallel before attach."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Replicas(ddp_holds_host)


class Replicas:
    """This rank's side of the lock-step protocol (see the module docstring)."""

    def __init__(self, ddp_holds_host: bool = False) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.leader = self.rank == LEADER
        # gloo reduces CPU tensors, nccl CUDA ones.
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        self.every = 0  # the snapshot cadence every rank follows (rank 0's, broadcast)
        self._model: MorphableModel | None = None
        self._answers: list[tuple[AdaptationDecision, DecisionAck]] = []
        self._grad_hooks: dict[str, list] = {}
        self._sync_queued = False
        # A DDP built before attach holds the host's parameters, the stream's among them.
        self.ddp_holds_host = ddp_holds_host
        self._stream_hooks: list = []
        self._stream_averaged = False  # the stream's gradients are this rank's to average
        self._stream_params: list[nn.Parameter] = []  # those parameters, hooked

    # ---- seeds (and the stream) outside DDP ----------------------------------------------
    def bind(self, model: MorphableModel) -> None:
        """Follow `model`'s seeds (before a checkpoint restore adds any) and its residual
        stream, unless a DDP built before attach holds it (then it cannot widen)."""
        self._model = model
        model.seed_added_listeners.append(self._seed_added)
        model.seed_removed_listeners.append(self._seed_removed)
        if model.stream is not None:
            if self.ddp_holds_host:
                model.stream_frozen = STREAM_HELD_BY_DDP
            else:
                self._stream_averaged = True
                model.stream_listeners.append(self._stream_widened)
                self._hook_stream()
        self._refresh_ddp_ignore()

    def _seed_added(self, slot, params: list[nn.Parameter]) -> None:
        self._drop_hooks(slot.slot_id)
        self._grad_hooks[slot.slot_id] = [
            p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]
        self._refresh_ddp_ignore()

    def _seed_removed(self, slot, params: list[nn.Parameter]) -> None:
        self._drop_hooks(slot.slot_id)
        self._refresh_ddp_ignore()

    def _drop_hooks(self, slot_id: str) -> None:
        for handle in self._grad_hooks.pop(slot_id, []):
            handle.remove()

    def _stream_widened(self, _replaced: dict) -> None:
        """The stream's parameters were replaced (on every rank, at the same point): hook
        the new ones. Their weights are broadcast in `publish`, where every rank is."""
        self._hook_stream()
        self._refresh_ddp_ignore()

    def _hook_stream(self) -> None:
        for handle in self._stream_hooks:
            handle.remove()
        self._stream_params = [t for _, t in self._model.stream_tensors()
                               if isinstance(t, nn.Parameter) and t.requires_grad]
        self._stream_hooks = [p.register_post_accumulate_grad_hook(self._grad_ready)
                              for p in self._stream_params]

    def _refresh_ddp_ignore(self) -> None:
        model = self._model
        names = [name for name, _ in chain(model.named_parameters(), model.named_buffers())
                 if name.startswith(SLOTS_ATTR + ".")]
        if self._stream_averaged:
            names += [name for name, _ in model.stream_tensors()]
        model.__dict__[DDP_IGNORE_ATTR] = names

    def _grad_ready(self, _param: nn.Parameter) -> None:
        if not self._sync_queued:
            self._sync_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._average_grads)

    def _average_grads(self) -> None:
        """End of a backward pass: average every gradient DDP leaves alone (the stream's,
        then every seed's) over the ranks (module, slot and parameter order are the same
        everywhere, so the flat buffers line up)."""
        self._sync_queued = False
        seeds = (p for slot in self._model.esper_slots.values() for p in slot.seed_parameters())
        grads = [p.grad for p in chain(self._stream_params, seeds) if p.grad is not None]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat.div_(self.world)
            offset = 0
            for g in group:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    # ---- measurements ----------------------------------------------------------------------
    def reduce_window(self, session) -> None:
        """All-reduce the open metric window and the slots' seed accumulators, so every
        rank reads the global batch's numbers. The loss is each rank's batch mean, so the
        ranks' losses are averaged (DDP's gradients assume equal local batches too)."""
        slots = list(session.model.esper_slots.values())
        local = [torch.tensor(session.metrics.window_sums(), dtype=torch.float64)]
        if slots:
            local.append(torch.stack([b.detach().double().cpu() for s in slots for b in
                                      (s.non_finite_acc, s.delta_acc, s.delta_count)]))
        flat = torch.cat(local).to(self.device)
        dist.all_reduce(flat)
        values = flat.cpu().tolist()
        loss, hits, labelled, samples = values[:4]
        session.metrics.set_window_sums(loss / self.world, hits, labelled, samples)
        for i, slot in enumerate(slots):
            non_finite, delta, count = values[4 + 3 * i: 7 + 3 * i]
            slot.non_finite_acc.fill_(int(non_finite))
            slot.delta_acc.fill_(delta)
            slot.delta_count.fill_(int(count))

    def mean(self, values: list[float]) -> list[float]:
        """Each value averaged over the ranks where it is finite (NaN where none has it:
        ranks that skipped validation do not count)."""
        pairs = [x for v in values for x in ((v, 1.0) if math.isfinite(v) else (0.0, 0.0))]
        flat = torch.tensor(pairs, dtype=torch.float64, device=self.device)
        dist.all_reduce(flat)
        sums = flat.cpu().tolist()
        return [sums[2 * i] / sums[2 * i + 1] if sums[2 * i + 1] else math.nan
                for i in range(len(values))]

    # ---- decisions ---------------------------------------------------------------------------
    def answered(self, decision: AdaptationDecision, ack: DecisionAck) -> None:
        """Rank 0 answered `decision` with `ack` at this safe point."""
        self._answers.append((decision, ack))

    def start(self, session, every: int) -> None:
        """At attach: agree on the cadence, the seed records and the seeds' weights (a
        resumed run's)."""
        self.publish(session, every)
        self._broadcast_seeds(session.model, [s.slot_id for s in
                                              session.model.esper_slots.values()])
        self._broadcast_stream(session.model)

    def publish(self, session, every: int) -> None:
        """End of a safe point (or a settle): rank 0 sends what it decided, the other
        ranks follow it. Every rank calls this at the same point."""
        if self.leader:
            answers, self._answers = self._answers, []
            data = json.dumps(self._payload(session, answers, every)).encode()
            self._broadcast_bytes(data)
        else:
            payload = json.loads(self._broadcast_bytes(None))
            answers = self._follow(session, payload)
        self.every = int(every if self.leader else payload["every"])
        applied = [d for d, a in answers if a.status == AckStatus.ACK_STATUS_APPLIED]
        self._broadcast_seeds(session.model, [d.germinate.slot_id for d in applied
                                              if d.WhichOneof("action") == "germinate"])
        if any(d.WhichOneof("action") == "widen_stream" for d in applied):
            self._broadcast_stream(session.model)

    def _payload(self, session, answers, every: int) -> dict:
        kernels = {}
        for decision, ack in answers:
            g = decision.germinate
            if decision.WhichOneof("action") == "germinate" and g.kernel_id \
                    and ack.status == AckStatus.ACK_STATUS_APPLIED:
                data = session.cache.get_ready(g.kernel_id, g.kernel_sha256)
                kernels[g.kernel_id] = _b64(data)
        return {
            "every": every,
            "answers": [[_b64(d.SerializeToString()), _b64(a.SerializeToString())]
                        for d, a in answers],
            "kernels": kernels,
            "records": {s.slot_id: s.record.to_dict() for s in session.model.esper_slots.values()},
        }

    def _follow(self, session, payload: dict) -> list[tuple[AdaptationDecision, DecisionAck]]:
        answers = [(AdaptationDecision.FromString(_unb64(d)), DecisionAck.FromString(_unb64(a)))
                   for d, a in payload["answers"]]
        for decision, ack in answers:
            g = decision.germinate
            if decision.WhichOneof("action") == "germinate" and g.kernel_id in payload["kernels"]:
                session.receive_kernel(g, _unb64(payload["kernels"][g.kernel_id]))
            mine = session.follow_decision(decision, ack)
            if mine is not None and mine.status != ack.status:
                raise ReplicaDivergence(
                    f"rank {self.rank}: decision {decision.decision_id} was "
                    f"{AckStatus.Name(ack.status)} on rank {LEADER} but "
                    f"{AckStatus.Name(mine.status)} here: {mine.reason}")
        self._take_records(session.model, payload["records"])
        return answers

    def _take_records(self, model: MorphableModel, records: dict) -> None:
        for slot in model.esper_slots.values():
            theirs = SeedRecord.from_dict(records[slot.slot_id])
            if (theirs.stage, theirs.seed_id) != (slot.record.stage, slot.record.seed_id):
                raise ReplicaDivergence(
                    f"rank {self.rank}: slot {slot.slot_id} holds seed {slot.record.seed_id!r} "
                    f"in stage {slot.record.stage}, rank {LEADER} seed {theirs.seed_id!r} in "
                    f"stage {theirs.stage}")
            slot.record = theirs
            slot.alpha_t.fill_(theirs.alpha)

    def _broadcast_seeds(self, model: MorphableModel, slot_ids: list[str]) -> None:
        """Rank 0's weights for the seeds germinated at this point (built from the same
        kernel they already agree; a seed initialised at random would not)."""
        for slot_id in slot_ids:
            seed = model.slot(slot_id).seed
            if seed is None:
                continue
            with torch.no_grad():
                for tensor in seed.state_dict().values():
                    dist.broadcast(tensor, LEADER)

    def _broadcast_stream(self, model: MorphableModel) -> None:
        """Rank 0's stream weights, when this rank averages the stream (DDP, which would
        have synced them when it was built, leaves them alone)."""
        if not self._stream_averaged:
            return
        with torch.no_grad():
            for _, tensor in model.stream_tensors():
                dist.broadcast(tensor.data, LEADER)

    def _broadcast_bytes(self, data: bytes | None) -> bytes:
        size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64,
                            device=self.device)
        dist.broadcast(size, LEADER)
        if data is not None:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device)
        else:
            buf = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        dist.broadcast(buf, LEADER)
        return data if data is not None else bytes(buf.cpu().numpy().tobytes())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
