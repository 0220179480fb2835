"""Applying AdaptationDecisions with defence in depth: whatever sent a decision, it is
re-checked here (id, expiry, slot, blueprint/kernel, lifecycle table, gates, budget)
and answered with exactly one DecisionAck. A rejected decision never raises into the
training loop."""

from __future__ import annotations

from collections.abc import Callable

from esper.kasmina import widen
from esper.kasmina.seeds import SeedBuilder, SeedBuildError
from esper.kasmina.slot import GateRefused, SeedSlot
from esper.kasmina.wrap import MorphableModel
from esper.leyline import lifecycle
from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, DecisionAck

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2


class Rejected(Exception):
    """A decision refused, with the reason for its ack."""


class DecisionApplier:
    """Applies decisions to one MorphableModel; remembers every decision id it answered."""

    def __init__(self, model: MorphableModel, build_seed: SeedBuilder | None = None, *,
                 run_id: str = "", is_function_preserving: Callable[[str], bool] | None = None):
        self.model = model
        self.build_seed = build_seed
        self.run_id = run_id
        self._function_preserving = is_function_preserving or getattr(
            build_seed, "is_function_preserving", lambda ref: True)
        self.answered: set[str] = set()

    def apply(self, decision: AdaptationDecision, loss: float | None = None, *,
              seed_id: str | None = None) -> DecisionAck:
        """Apply one decision at a safe point; returns its (single) ack. `seed_id` names
        the seed a germinate creates (a replica of a distributed run takes rank 0's)."""
        step = self.model.global_step
        ack = DecisionAck(decision_id=decision.decision_id, run_id=decision.run_id or self.run_id,
                          step=step)
        if not decision.decision_id:
            return _rejected(ack, "decision_id is empty")
        if decision.decision_id in self.answered:
            return _rejected(ack, f"duplicate decision id {decision.decision_id!r}: already answered")
        self.answered.add(decision.decision_id)
        if decision.expires_at_step and decision.expires_at_step < step:
            ack.status = AckStatus.ACK_STATUS_EXPIRED
            ack.reason = f"expired at step {decision.expires_at_step}, now step {step}"
            return ack
        try:
            ack.reason = self._dispatch(decision, ack, loss, seed_id)
            ack.status = AckStatus.ACK_STATUS_APPLIED
        except Rejected as exc:
            _rejected(ack, str(exc))
        except GateRefused as exc:
            ack.gate.CopyFrom(exc.result)
            _rejected(ack, str(exc))
        except lifecycle.IllegalTransition as exc:
            _rejected(ack, str(exc))
        return ack

    def _dispatch(self, d: AdaptationDecision, ack: DecisionAck, loss: float | None,
                  seed_id: str | None = None) -> str:
        kind = d.WhichOneof("action")
        if kind is None:
            raise Rejected("decision has no action")
        if kind == "wait":
            return f"waiting {d.wait.steps} steps"
        if kind == "widen_stream":
            return self._widen_stream(d.widen_stream.features)
        slot = self._slot(getattr(d, kind).slot_id)
        step = self.model.global_step
        if kind == "germinate":
            return self._germinate(d, slot, ack, loss, seed_id)
        if kind == "cull":
            if not slot.is_live():
                raise lifecycle.IllegalTransition(slot.stage, S.SEED_STAGE_CULLED)
            slot.cull(step, d.cull.reason, d.cull.detail, d.cull.embargo_steps)
            return f"culled ({slot.record.cull_reason})"
        if kind == "fossilize":
            target = S.SEED_STAGE_FOSSILIZED
        else:
            target = d.advance.target_stage or lifecycle.next_stage(slot.stage)
            if target is None:
                raise lifecycle.IllegalTransition(slot.stage, S.SEED_STAGE_UNSPECIFIED)
        lifecycle.check_transition(slot.stage, target)
        ack.gate.CopyFrom(slot.advance(step, target, loss))
        return f"{lifecycle.stage_name(target)}: gate passed"

    def _widen_stream(self, features: int) -> str:
        model = self.model
        if model.live_seed_count():  # one change at a time: a live seed's gains stay its own
            raise Rejected(f"widen_stream: {model.live_seed_count()} live seeds; the stream "
                           "widens only when none is live")
        width = model.stream.width if model.stream is not None else 0
        try:
            added = model.widen_stream(features)
        except ValueError as exc:
            raise Rejected(f"widen_stream: {exc}") from exc
        return f"widened the residual stream {width} -> {model.stream.width} ({added} params)"

    def _slot(self, slot_id: str) -> SeedSlot:
        try:
            return self.model.slot(slot_id)
        except KeyError as exc:
            raise Rejected(f"unknown slot {slot_id!r}") from exc

    def _germinate(self, d: AdaptationDecision, slot: SeedSlot, ack: DecisionAck,
                   loss: float | None, seed_id: str | None = None) -> str:
        g = d.germinate
        lifecycle.check_transition(slot.stage, S.SEED_STAGE_GERMINATED)
        cfg = self.model.cfg
        if self.model.live_seed_count() >= cfg.max_live_seeds:
            raise Rejected(f"budget: {cfg.max_live_seeds} live seeds already (max_live_seeds)")
        if self.build_seed is None:
            raise Rejected("no seed builder configured")
        try:
            seed = self.build_seed(g, slot.shape, slot.device, slot.dtype)
        except SeedBuildError as exc:
            raise Rejected(str(exc)) from exc
        if widen.widen_request(seed):
            try:
                seed = widen.materialise(seed, slot.widen_site, self.model.host,
                                         blueprint_ref=g.blueprint_ref,
                                         rng_seed=widen.rng_seed_for(slot.slot_id, self.model.global_step))
            except ValueError as exc:
                raise Rejected(f"{g.blueprint_ref} in {slot.slot_id}: {exc}") from exc
        added = sum(p.numel() for p in seed.parameters() if p.requires_grad)
        host = self.model.declared_host_params()
        limit = cfg.max_seed_param_fraction * host
        if self.model.seed_param_count() + added > limit:
            raise Rejected(f"budget: seed params {self.model.seed_param_count()} + {added} "
                           f"> {limit:.0f} (max_seed_param_fraction "
                           f"{cfg.max_seed_param_fraction} of the host's {host} parameters"
                           f"{' at its declared stream width' if self.model.stream else ''})")
        result = slot.germinate(
            seed, step=self.model.global_step, blueprint_ref=g.blueprint_ref,
            kernel_id=g.kernel_id, kernel_digest=g.kernel_sha256.lower(), schedule=g.schedule,
            function_preserving=self._function_preserving(g.blueprint_ref), loss=loss,
            seed_id=seed_id,
        )
        ack.gate.CopyFrom(result)
        ack.seed_id = slot.record.seed_id
        return f"germinated {g.blueprint_ref} in {slot.slot_id} ({added} params)"


def _rejected(ack: DecisionAck, reason: str) -> DecisionAck:
    ack.status = AckStatus.ACK_STATUS_REJECTED
    ack.reason = reason
    return ack
