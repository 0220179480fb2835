"""TolariaSession: the training-loop side of a run, driven by two calls from any loop:

    session.step(loss, outputs, targets)   # after optimizer.step(), before zero_grad()
    session.end_epoch({"val_loss": ..., "val_accuracy": ...})

Every `snapshot_every` steps and at each epoch end the session reaches a *safe point*
(between two steps): it reads the device accumulators once, lets Kasmina trip circuit
breakers, builds a TrainingSnapshot, hands it to the policy source, and applies the
decisions that have arrived, acking each exactly once. Decisions arriving from a remote
source between snapshots are applied at the next step boundary. Nothing here waits on
the network.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from esper.blueprints.artifact import read_kernel_header
from esper.kasmina import BlueprintSeedBuilder, DecisionApplier, HealthMonitor, KernelCache
from esper.kasmina.health import grad_squares
from esper.kasmina.wrap import MorphableModel
from esper.leyline.lifecycle import stage_name
from esper.leyline.v1.common_pb2 import Dtype, SlotKind
from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck
from esper.leyline.v1.signals_pb2 import LayerHealth, ResourceState, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget, SessionOpen
from esper.leyline.v1.telemetry_pb2 import SeedTransition
from esper.leyline.version import contract_version
from esper.rpc.tracing import get_tracer, spans_recorded
from esper.tolaria.budget import runtime_budget
from esper.tolaria.config import TolariaConfig
from esper.tolaria.distributed import Replicas
from esper.tolaria.flops import FlopMeter
from esper.tolaria.metrics import MetricsWindow, global_grad_norm
from esper.tolaria.optim import SeedParamGroups, host_learning_rate, swap_parameters
from esper.tolaria.outcomes import SeedOutcomes
from esper.tolaria.policy.base import PolicySource
from esper.tolaria.settle import settle_seeds
from esper.tolaria.summary import RunSummary, SeedLog
from esper.tolaria.telemetry import Telemetry

log = logging.getLogger(__name__)
_tracer = get_tracer("esper.tolaria")

# Kernel readiness of a pending germinate (anything else is the reason it cannot be had).
_READY = "ready"
_WAIT = "wait"

CLIENT_VERSION = "esper-tolaria 0.1.0"
# The keys end_epoch accepts (those of the snapshot's validation metrics).
VAL_METRICS = ("val_loss", "val_accuracy")
AckListener = Callable[[DecisionAck], None]
# Capability tags the session advertises: Kasmina hosts seeds in every slot kind it places,
# so a model with slots of a kind can run the blueprints that require that kind (Urza's
# SearchKernels only offers blueprints whose requires_capability the session has).
_KIND_TAGS = {SlotKind.SLOT_KIND_FEATURES: "features", SlotKind.SLOT_KIND_SEQUENCE: "sequence",
              SlotKind.SLOT_KIND_CONV1D: "conv1d", SlotKind.SLOT_KIND_CONV2D: "conv2d"}
_DTYPES = {torch.float32: Dtype.DTYPE_FLOAT32, torch.float16: Dtype.DTYPE_FLOAT16,
           torch.bfloat16: Dtype.DTYPE_BFLOAT16, torch.float64: Dtype.DTYPE_FLOAT64}


class TolariaSession:
    """One run of a wrapped model under a policy source. Build it with `attach()`."""

    def __init__(self, model: MorphableModel, optimizer: torch.optim.Optimizer,
                 policy: PolicySource | None, *, config: TolariaConfig,
                 seed_builder: BlueprintSeedBuilder, cache: KernelCache,
                 fallback: PolicySource | None = None, telemetry: Telemetry | None = None,
                 budget: ResourceBudget | None = None, replicas: Replicas | None = None) -> None:
        self.model = model
        # The other ranks of a torch.distributed run (esper.tolaria.distributed), or None.
        self.replicas = replicas
        self.optimizer = optimizer
        self.config = config
        self.run_id = config.run_id
        self.policy = policy
        self.fallback = fallback if config.on_outage == "local" else None
        self.cache = cache
        self.local_kernels = None  # LocalKernels, when the built-in catalogue is in use
        self.loop_state: dict = {}  # the training loop's position restored from a checkpoint
        self.telemetry = telemetry or Telemetry(config.run_id)
        self.groups = SeedParamGroups(model, optimizer, rule=self.config.seed_lr)
        if replicas is not None:
            replicas.bind(model)
        model.stream_listeners.append(self._on_stream_widened)
        self.seed_builder = seed_builder
        self.applier = DecisionApplier(model, seed_builder, run_id=config.run_id)
        # The snapshot cadence in force (the `snapshot_every` property's value), read once
        # per safe point and wherever decisions are looked for between them (a remote
        # Tamiyo may ask for a cadence at any time), not at every step.
        self._every = config.snapshot_every
        self.health = self._health_monitor(config.snapshot_every)
        self.metrics = MetricsWindow()
        self.outcomes = SeedOutcomes(config.run_id)
        self.seed_log = SeedLog()
        self.flops = FlopMeter(model)
        self.pending: list[AdaptationDecision] = []
        self.ack_listeners: list[AckListener] = []
        self.ack_counts = {s: 0 for s in (AckStatus.ACK_STATUS_APPLIED,
                                          AckStatus.ACK_STATUS_REJECTED,
                                          AckStatus.ACK_STATUS_EXPIRED)}
        # WAIT decisions: acked APPLIED on the wire, but nothing was applied.
        self.waits = 0
        self.duplicates_dropped = 0
        self.sequence = 0
        self.last_applied_decision_id = ""
        self.outage_reason: str | None = None
        self.host_params_at_start = model.host_param_count()
        self._layers: list[LayerHealth] = []
        self._issuer: dict[str, PolicySource] = {}
        self._applying: AdaptationDecision | None = None
        self._kernel_errors: dict[str, str] = {}
        self._closed = False
        # Whether a decision can arrive between safe points: from a source that decides
        # on its own time (a remote Tamiyo), not one that decides only in observe().
        self._decisions_between = any(
            source is not None and not getattr(source, "decides_at_snapshots", False)
            for source in (self.policy, self.fallback))
        self.graph = model.model_graph()
        stream = model.stream
        self.budget = runtime_budget(budget, model.declared_host_params(), model.cfg.max_seed_param_fraction,
                                     stream.growth_params() if stream else 0)
        model.transition_listeners.append(self._on_transition)
        self.open_message: SessionOpen | None = None

    def start(self) -> TolariaSession:
        """Open the run with the policy sources (after a checkpoint restore, if any, so a
        remote Tamiyo sees the restored seeds and acked decisions)."""
        self.open_message = self._open_message()
        for source in (self.policy, self.fallback):
            if source is not None:
                source.start(self.open_message)
        if self.replicas is not None:
            self.replicas.start(self, self._policy_every())
        self._refresh_cadence()
        return self

    def reset_health(self) -> None:
        """Start a fresh health window (after the weights were replaced by a restore)."""
        self.health.close()
        self.health = self._health_monitor(self.snapshot_every)
        self._refresh_cadence()

    def _health_monitor(self, every: int) -> HealthMonitor:
        return HealthMonitor.for_slots(self.model, every=every,
                                       sample_every=self.config.health_sample_every,
                                       activation_every=self.config.health_activation_every)

    # ---- the two calls of the hook API ---------------------------------------------------
    def step(self, loss: torch.Tensor | float, outputs: torch.Tensor | None = None,
             targets: torch.Tensor | None = None, *, last_in_epoch: bool = False) -> None:
        """One training step is done (call after optimizer.step(), before zero_grad()).
        `last_in_epoch=True` on an epoch's last step skips a periodic snapshot there: the
        epoch-end snapshot follows at the same step (snapshot steps must increase)."""
        model = self.model
        model.seed_step()
        snapshot = model.global_step % self._every == 0 and not last_in_epoch
        squares = params = None
        if snapshot:  # the global norm's gradient reads serve layer health's sample too
            params = model.parameter_list()
            squares = grad_squares(params)
            self.metrics.grad_norm = global_grad_norm(squares)
        self.health.after_backward(squares)
        self.metrics.observe(loss, outputs, targets)
        layers = self.health.step()
        if layers is not None:
            self._layers = layers
        if snapshot:
            self._safe_point(epoch_end=False, params=params)
        elif self.replicas is None and (self.pending or self._decisions_between):
            # Replicas apply decisions at safe points only; so does a session whose
            # sources decide only when they observe a snapshot, unless one waits.
            self._apply_arrived(observe=None)

    def end_epoch(self, val_metrics: dict | None = None) -> TrainingSnapshot:
        """An epoch is done; `val_metrics` may hold val_loss and val_accuracy (numbers or
        one-element tensors, measured on held-out data; an absent one is unknown). Any
        other key is refused with ValueError: a misspelt or training metric would
        otherwise be silently dropped. Returns the epoch-end snapshot."""
        val = val_metrics or {}
        unknown = sorted(set(val) - set(VAL_METRICS))
        if unknown:
            raise ValueError(f"end_epoch: unknown metric keys {unknown}; known: "
                             f"{list(VAL_METRICS)}")
        self.model.seed_epoch()
        val_loss = float(val.get("val_loss", math.nan))
        val_acc = float(val.get("val_accuracy", math.nan))
        if self.replicas is not None:  # each rank validated its shard (or nothing)
            val_loss, val_acc = self.replicas.mean([val_loss, val_acc])
        self.metrics.end_epoch(val_loss, val_acc)
        return self._safe_point(epoch_end=True)

    # ---- reading -------------------------------------------------------------------------
    @property
    def snapshot_every(self) -> int:
        if self.replicas is not None and self.replicas.every:
            return self.replicas.every  # rank 0's cadence as of the last safe point
        return self._policy_every()

    def _refresh_cadence(self) -> None:
        """Take the cadence now in force: snapshots, and layer health's windows with them."""
        self._every = self.health.every = self.snapshot_every

    def _policy_every(self) -> int:
        asked = self.policy.snapshot_every() if self.policy is not None else None
        return asked if asked and asked > 0 else self.config.snapshot_every

    def live_seed_count(self) -> int:
        return self.model.live_seed_count()

    def acked_ids(self) -> set[str]:
        return set(self.applier.answered)

    # ---- safe points -----------------------------------------------------------------------
    def _safe_point(self, epoch_end: bool, params: list | None = None) -> TrainingSnapshot:
        # One span per safe point: the snapshot, acks and transitions published under it
        # carry its traceparent through Kafka into Nissa.
        if not spans_recorded():
            return self._safe_point_inner(epoch_end, params)
        with _tracer.start_as_current_span(
            "tolaria.safe_point",
            attributes={"esper.run_id": self.config.run_id, "esper.step": self.model.global_step,
                        "esper.epoch_end": epoch_end},
        ):
            return self._safe_point_inner(epoch_end, params)

    def _safe_point_inner(self, epoch_end: bool, params: list | None) -> TrainingSnapshot:
        if self.replicas is not None:
            self.replicas.reduce_window(self)
        self.metrics.read()
        raw = self.metrics.last_train_loss
        if self.model.safe_point(self._gate_loss(),
                                 breaker_loss=raw if math.isfinite(raw) else None):
            params = None  # a tripped breaker culled a seed: its parameters are gone
        snapshot = self._snapshot(epoch_end, params)
        if self.replicas is None or self.replicas.leader:
            self.telemetry.publish(snapshot=snapshot)
            self._apply_arrived(observe=snapshot)
        if self.replicas is not None:
            self.replicas.publish(self, self._policy_every())
        self._refresh_cadence()
        return snapshot

    def _gate_loss(self) -> float | None:
        """The loss Kasmina's gates (and the seed metrics the policy reads) see: the
        smoothed train loss (one consistent signal, over ~LOSS_SMOOTHING_STEPS steps, so
        a seed is not judged on one window's batch noise). The circuit breaker sees the
        raw window mean, so an explosion trips it at once."""
        loss = self.metrics.smoothed_train_loss
        return loss if math.isfinite(loss) else None

    def _active_source(self) -> PolicySource | None:
        if self.policy is None:
            return self.fallback
        reason = self.policy.outage()
        if (reason is None) != (self.outage_reason is None):
            self._report_outage(reason)
        self.outage_reason = reason
        return self.fallback if reason is not None else self.policy

    def _report_outage(self, reason: str | None) -> None:
        from esper.leyline.v1 import telemetry_pb2

        if reason is None:
            self.telemetry.alert("policy_recovered", f"policy {self.policy.name} is back",
                                 telemetry_pb2.SEVERITY_INFO)
        else:
            mode = "local policy" if self.fallback is not None else "no decisions"
            self.telemetry.alert("policy_outage", f"policy {self.policy.name} unavailable "
                                 f"({reason}); training continues with {mode}")

    def _apply_arrived(self, observe: TrainingSnapshot | None) -> None:
        self._refresh_cadence()
        active = self._active_source()
        if observe is not None:
            if self.policy is not None and active is not self.policy:
                self.policy.observe(observe)  # the remote keeps the latest state for resume
            if active is not None:
                active.observe(observe)
        for source in (self.policy, self.fallback):
            if source is not None:
                for decision in source.decisions():
                    self._accept(decision, source)
        if self.pending:
            self._apply_pending()

    def _accept(self, decision: AdaptationDecision, source: PolicySource) -> None:
        known = decision.decision_id in self.applier.answered or any(
            d.decision_id == decision.decision_id for d in self.pending)
        if known and decision.decision_id:
            self.duplicates_dropped += 1
            return
        self._issuer[decision.decision_id] = source
        self.pending.append(decision)
        status = self._kernel_status(decision)  # starts the kernel prefetch early
        if status not in (_READY, _WAIT):
            self._kernel_errors[decision.decision_id] = status

    def _apply_pending(self) -> None:
        waiting: list[AdaptationDecision] = []
        for decision in self.pending:
            status = _READY
            if not self._expired(decision):  # an expired one is acked EXPIRED by Kasmina
                status = self._kernel_errors.pop(decision.decision_id, None) \
                    or self._kernel_status(decision)
            if status == _WAIT:
                waiting.append(decision)
                continue
            if status != _READY:
                self.applier.answered.add(decision.decision_id)
                ack = DecisionAck(decision_id=decision.decision_id, run_id=self.run_id,
                                  status=AckStatus.ACK_STATUS_REJECTED, reason=status,
                                  step=self.model.global_step)
            else:
                self._applying = decision
                try:
                    ack = self.applier.apply(decision, loss=self._gate_loss())
                finally:
                    self._applying = None
            if self.replicas is not None:
                self.replicas.answered(decision, ack)
            self._acked(ack, wait=decision.WhichOneof("action") == "wait")
        self.pending = waiting

    def _expired(self, decision: AdaptationDecision) -> bool:
        return bool(decision.expires_at_step) and decision.expires_at_step < self.model.global_step

    def _kernel_status(self, decision: AdaptationDecision) -> str:
        """_READY, _WAIT (the kernel is still being fetched; a prefetch is started) or why
        the germinate's kernel cannot be had. Never blocks."""
        if decision.WhichOneof("action") != "germinate" or not decision.germinate.kernel_id:
            return _READY
        g = decision.germinate
        if not g.kernel_sha256:
            return f"kernel {g.kernel_id}: kernel_sha256 is required"
        try:
            data = self.cache.get_ready(g.kernel_id, g.kernel_sha256)
        except Exception as exc:  # noqa: BLE001 - fetch/digest errors of a prefetch, as a reason
            return str(exc)
        if data is None:
            if not self.cache.is_pending(g.kernel_id):
                self.cache.prefetch(g.kernel_id, g.kernel_sha256)
            return _WAIT
        self._learn_blueprint(g.blueprint_ref, data)
        return _READY

    # ---- replicas (ranks other than 0 of a distributed run) -----------------------------------
    def receive_kernel(self, germinate, data: bytes) -> None:
        """A kernel rank 0 germinated a seed from: into the cache (digest verified)."""
        if germinate.kernel_id not in self.cache:
            self.cache.put(germinate.kernel_id, data, germinate.kernel_sha256)
        self._learn_blueprint(germinate.blueprint_ref, data)

    def follow_decision(self, decision: AdaptationDecision, ack: DecisionAck) -> DecisionAck | None:
        """Apply what rank 0 applied (with its seed id; returns this rank's ack) or only
        record the answer of one it refused or let expire (returns None); the counts and
        ack listeners see rank 0's ack."""
        mine = None
        wait = decision.WhichOneof("action") == "wait"
        if ack.status == AckStatus.ACK_STATUS_APPLIED and not wait:
            self._applying = decision
            try:
                mine = self.applier.apply(decision, loss=self._gate_loss(),
                                          seed_id=ack.seed_id or None)
            finally:
                self._applying = None
        else:
            self.applier.answered.add(decision.decision_id)
        self._acked(ack, wait=wait)
        return mine

    def _learn_blueprint(self, ref: str, data: bytes) -> None:
        """A kernel from Urza may implement a blueprint the built-in catalogue lacks: take
        its spec from the (digest-verified) kernel header, when the names agree."""
        catalog = self.seed_builder.catalog
        if ref in catalog:
            return
        try:
            spec, _ = read_kernel_header(data)
        except Exception:  # noqa: BLE001 - an unreadable header: the builder will say why
            return
        if f"{spec.name}@{spec.version}" == ref:
            catalog[ref] = spec

    def _acked(self, ack: DecisionAck, wait: bool = False) -> None:
        if wait and ack.status == AckStatus.ACK_STATUS_APPLIED:
            self.waits += 1  # acked APPLIED (the wire has no WAIT status) yet nothing done
        else:
            self.ack_counts[ack.status] = self.ack_counts.get(ack.status, 0) + 1
        if ack.status == AckStatus.ACK_STATUS_APPLIED:
            self.last_applied_decision_id = ack.decision_id
        elif ack.status == AckStatus.ACK_STATUS_REJECTED:
            log.info("run %s: decision %s rejected: %s", self.run_id, ack.decision_id, ack.reason)
        self.telemetry.publish(ack=ack)
        source = self._issuer.pop(ack.decision_id, None)
        if source is not None:
            source.acked(ack)
        for listener in self.ack_listeners:
            listener(ack)

    # ---- seeds -------------------------------------------------------------------------------
    def _on_transition(self, event: SeedTransition) -> None:
        decision = self._applying
        why = decision.rationale if decision is not None else ""
        log.info("run %s: seed %s in %s (%s): %s -> %s at step %d: %s%s", self.run_id,
                 event.seed_id, event.slot_id, event.blueprint_ref or "no blueprint",
                 stage_name(event.from_stage), stage_name(event.to_stage), event.step,
                 event.reason, f" (decision: {why})" if why else "")
        self.telemetry.publish(seed_transition=event)
        self.seed_log.on_transition(event, why=why)
        self.flops.changed(event.step)
        slot = self.model.slot(event.slot_id)
        report = self.outcomes.on_transition(
            event, kernel_id=slot.record.kernel_id,
            decision_id=decision.decision_id if decision is not None else "",
            val_loss=self.metrics.val_loss, val_accuracy=self.metrics.val_accuracy)
        if report is None:
            return
        self.telemetry.publish(field_report=report)
        for source in (self.policy, self.fallback):
            if source is not None:
                source.field_report(report)

    def _on_stream_widened(self, replaced: dict) -> None:
        """The host's residual stream widened: its new parameters take the old ones'
        places in the optimizer, the FLOPs rate and layer health start again on the new
        shapes, and the graph is rebuilt (slot shapes on the stream changed)."""
        swap_parameters(self.optimizer, replaced)
        self.flops.changed(self.model.global_step)
        self.graph = self.model.model_graph()
        self.reset_health()
        stream = self.model.stream
        log.info("run %s: residual stream widened to %d at step %d", self.run_id, stream.width,
                 self.model.global_step)

    # ---- messages --------------------------------------------------------------------------
    def _snapshot(self, epoch_end: bool, params: list | None = None) -> TrainingSnapshot:
        """The safe point's TrainingSnapshot; `params`: the model's parameters, when the
        caller has listed them this step."""
        self.sequence += 1
        snap = TrainingSnapshot(
            run_id=self.run_id, step=self.model.global_step, epoch=self.model.epoch,
            sequence=self.sequence, metrics=self.metrics.to_proto(host_learning_rate(self.optimizer)),
            layers=self._layers, seeds=self.model.seed_states(),
            resources=self._resources(params),
            epoch_end=epoch_end,
        )
        stream = self.model.stream_state()
        if stream is not None:
            snap.stream.CopyFrom(stream)
        snap.time.FromNanoseconds(time.time_ns())  # GetCurrentTime goes through datetime
        return snap

    def _resources(self, params: list | None = None) -> ResourceState:
        if params is None:
            params = self.model.parameter_list()
        device = params[0].device if params else torch.device("cpu")
        used = total = 0
        if device.type == "cuda":
            used = torch.cuda.memory_allocated(device)
            total = torch.cuda.get_device_properties(device).total_memory
        trainable = sum(p.numel() for p in params if p.requires_grad)
        spent = self.flops.totals(self.model.global_step)  # None: never measured
        rate = self.flops.per_step
        return ResourceState(
            device=device.type, memory_used_bytes=used, memory_total_bytes=total,
            total_params=trainable, seed_params=self.model.seed_param_count(),
            step_time_ms=self.metrics.step_time_ms, telemetry_dropped=self.telemetry.dropped(),
            model_flops_per_example=self.flops.forward_per_example(),
            training_flops=sum(spent) if spent else 0.0,
            training_flops_per_step=sum(rate) if rate else 0.0,
        )

    def _device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    def _open_message(self) -> SessionOpen:
        dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
        return SessionOpen(
            run_id=self.run_id, contract_version=contract_version(), client_version=CLIENT_VERSION,
            graph=self.graph, budget=self.budget, policy="heuristic",
            capabilities=Capabilities(device=self._device().type,
                                      dtype=_DTYPES.get(dtype, Dtype.DTYPE_FLOAT32),
                                      max_live_seeds=self.model.cfg.max_live_seeds,
                                      tags=sorted({_KIND_TAGS[s.shape.kind] for s in self.graph.slots
                                                   if s.shape.kind in _KIND_TAGS})),
            seeds=self.model.seed_states(), last_applied_decision_id=self.last_applied_decision_id,
            acked_decision_ids=sorted(self.applier.answered),
        )

    # ---- end -------------------------------------------------------------------------------
    def close(self, expire_pending: bool = True, *, settle: bool | None = None) -> None:
        """End the run. Decisions never applied are acked EXPIRED, then the seeds still
        live are settled (esper.tolaria.settle: fossilized if every remaining gate passes
        now, culled otherwise), so `model.unwrap()` is the final model.
        `expire_pending=False` (the run is to be resumed from a checkpoint) keeps both:
        pending decisions travel in the checkpoint and live seeds stay live; `settle`
        overrides the latter."""
        if self._closed:
            return
        if expire_pending:
            for decision in self.pending:
                self.applier.answered.add(decision.decision_id)
                ack = DecisionAck(
                    decision_id=decision.decision_id, run_id=self.run_id,
                    status=AckStatus.ACK_STATUS_EXPIRED, step=self.model.global_step,
                    reason="the run ended before the decision could be applied")
                if self.replicas is not None:
                    self.replicas.answered(decision, ack)
                self._acked(ack)
            self.pending = []
        if expire_pending if settle is None else settle:
            self.settle()
        elif self.replicas is not None:  # the other ranks still learn rank 0's last answers
            self.replicas.publish(self, self.replicas.every)
        self._closed = True
        for source in (self.policy, self.fallback):
            if source is not None:
                source.close()
        self.health.close()
        self.flops.close()
        self.telemetry.close()

    def settle(self) -> None:
        """Fossilize or cull every live seed now (see esper.tolaria.settle); close() does
        it for a run that ends. Under torch.distributed every rank calls it; each ends
        with rank 0's seeds."""
        settle_seeds(self.model, self._gate_loss())
        if self.replicas is not None:
            self.replicas.publish(self, self.replicas.every)

    def summary(self) -> RunSummary:
        """What the run did: a RunSummary (str() is a report; summary["key"] works too)."""
        acks = {AckStatus.Name(k).removeprefix("ACK_STATUS_").lower(): v
                for k, v in self.ack_counts.items()}
        flops = self.flops.totals(self.model.global_step)
        return RunSummary(
            run_id=self.run_id, step=self.model.global_step, epoch=self.model.epoch,
            val_loss=self.metrics.val_loss, val_accuracy=self.metrics.val_accuracy,
            host_params_before=self.host_params_at_start,
            params_after=sum(p.numel() for p in self.model.parameters()),
            seed_params=self.model.seed_param_count(), seeds=list(self.seed_log.seeds),
            decisions={**acks, "waits": self.waits},
            host_flops=flops[0] if flops else None, seed_flops=flops[1] if flops else None,
            telemetry_dropped=self.telemetry.dropped(),
            stream_widenings=[dict(w) for w in self.model.stream.history] if self.model.stream else [],
        )
