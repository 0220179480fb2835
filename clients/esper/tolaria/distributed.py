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


class ReplicaDivergence(RuntimeError):
    """A rank reached another seed state than rank 0: training must not go on."""


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module a DistributedDataParallel wraps (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def process_replicas() -> Replicas | None:
    """The Replicas of this process when torch.distributed runs more than one rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Replicas()


class Replicas:
    """This rank's side of the lock-step protocol (see the module docstring)."""

    def __init__(self) -> None:
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

    # ---- seeds outside DDP -----------------------------------------------------------------
    def bind(self, model: MorphableModel) -> None:
        """Follow `model`'s seeds (before a checkpoint restore adds any)."""
        self._model = model
        model.seed_added_listeners.append(self._seed_added)
        model.seed_removed_listeners.append(self._seed_removed)
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

    def _refresh_ddp_ignore(self) -> None:
        model = self._model
        names = [name for name, _ in chain(model.named_parameters(), model.named_buffers())
                 if name.startswith(SLOTS_ATTR + ".")]
        model.__dict__[DDP_IGNORE_ATTR] = names

    def _grad_ready(self, _param: nn.Parameter) -> None:
        if not self._sync_queued:
            self._sync_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._average_seed_grads)

    def _average_seed_grads(self) -> None:
        """End of a backward pass: average every seed gradient over the ranks (slot order
        and parameter order are the same everywhere, so the flat buffers line up)."""
        self._sync_queued = False
        grads = [p.grad for slot in self._model.esper_slots.values()
                 for p in slot.seed_parameters() if p.grad is not None]
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
        self._broadcast_seeds(session.model, [d.germinate.slot_id for d, a in answers
                                              if d.WhichOneof("action") == "germinate"
                                              and a.status == AckStatus.ACK_STATUS_APPLIED])

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
