"""SeedSlot: one place in the host model where a seed can grow, running the Leyline
lifecycle (never its own table) with every advance guarded by its gate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from esper.kasmina import gates, hooks
from esper.kasmina.blending import alpha_at, with_defaults
from esper.kasmina.bottleneck import BottleneckStatistic, entry_linear
from esper.kasmina.config import KasminaConfig
from esper.kasmina.record import SeedRecord
from esper.kasmina.shapes import SlotSite, probe_shape
from esper.kasmina.widen import WidenSeed, run_path
from esper.leyline import lifecycle
from esper.leyline.ids import new_seed_id
from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.common_pb2 import SlotShape
from esper.leyline.v1.control_pb2 import BlendSchedule, CullReason
from esper.leyline.v1.lifecycle_pb2 import GateCheck, GateResult, SeedMetrics, SeedState
from esper.leyline.v1.telemetry_pb2 import SeedTransition

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2
# Fixed seed of the probe generator: G0/G1 probes must not consume the training RNG
# (a germination would otherwise change the data order of the rest of the run).
PROBE_SEED = 0x5EED


def gate_name(level: int) -> str:
    """'G2' for GATE_LEVEL_G2, as people write it."""
    return gates.GateLevel.Name(level).removeprefix("GATE_LEVEL_")


class GateRefused(RuntimeError):
    """An advance whose gate did not pass; carries the GateResult."""

    def __init__(self, result: GateResult, slot_id: str) -> None:
        self.result = result
        failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.passed]
        super().__init__(
            f"slot {slot_id}: gate {gate_name(result.level)} refused: " + "; ".join(failed)
        )


class SlotEvents(Protocol):
    """Where a slot reports what happened (implemented by MorphableModel)."""

    host: nn.Module

    def transition(self, event: SeedTransition) -> None: ...
    def seed_added(self, slot: SeedSlot, params: list[nn.Parameter]) -> None: ...
    def seed_removed(self, slot: SeedSlot, params: list[nn.Parameter]) -> None: ...


class SeedSlot(nn.Module):
    """A slot after one host module. Its seed (if any) is the `seed` submodule, so its
    weights appear in state_dict as `esper_slots.<key>.seed.*`."""

    def __init__(self, slot_id: str, site: SlotSite, cfg: KasminaConfig,
                 events: SlotEvents, below: SeedSlot | None = None) -> None:
        super().__init__()
        self.slot_id = slot_id
        # The slot under this one in its layer's stack (None: the first slot of the layer).
        self.__dict__["below"] = below
        self.node_id = site.node_id
        self.shape = site.shape
        widen = site.widen
        if cfg.slot_depth > 1 and site.widen is not None:
            # Stacks and width growth do not combine (yet): unwrap() widens a layer before
            # wrapping it in the residual fossils stacked on it, which read its narrow output.
            self.shape = SlotShape()
            self.shape.CopyFrom(site.shape)
            self.shape.widen_params_per_unit = 0
            widen = None
        self.device = site.device
        self.dtype = site.dtype
        self.cfg = cfg
        self.seed: nn.Module | None = None
        self.record = SeedRecord()
        # The host module is not a submodule of the slot (its weights keep their keys).
        self.__dict__["host_module"] = site.module
        self.__dict__["_events"] = events
        self._handles: list = []
        # Width growth: where this slot's layer can be widened (None: it cannot).
        self.__dict__["widen_site"] = widen
        # A GERMINATED seed's bottleneck statistic, while one is gathered (seed_init).
        self.__dict__["bottleneck"] = None
        self.register_buffer("alpha_t", torch.zeros((), device=site.device), persistent=False)
        self.register_buffer("non_finite_acc", torch.zeros((), dtype=torch.int64,
                                                           device=site.device), persistent=False)
        self.register_buffer("delta_acc", torch.zeros((), device=site.device), persistent=False)
        self.register_buffer("delta_count", torch.zeros((), dtype=torch.int64,
                                                        device=site.device), persistent=False)
        self.register_buffer("grad_norm_t", torch.zeros((), device=site.device),
                             persistent=False)

    # ---- reading -------------------------------------------------------------------
    @property
    def stage(self) -> int:
        return self.record.stage

    def is_live(self) -> bool:
        return self.stage in lifecycle.LIVE_STAGES

    def seed_parameters(self) -> list[nn.Parameter]:
        """The seed's trainable parameters (for its own optimizer param group)."""
        return [] if self.seed is None else [p for p in self.seed.parameters() if p.requires_grad]

    def seed_param_count(self) -> int:
        return sum(p.numel() for p in self.seed_parameters())

    def seed_state(self) -> SeedState:
        """The Leyline SeedState of this slot."""
        r = self.record
        state = SeedState(
            seed_id=r.seed_id, slot_id=self.slot_id, stage=r.stage,
            blueprint_ref=r.blueprint_ref, kernel_id=r.kernel_id, kernel_digest=r.kernel_digest,
            alpha=r.alpha, steps_in_stage=r.steps_in_stage, epochs_in_stage=r.epochs_in_stage,
            germinated_at_step=r.germinated_at_step, cull_reason=r.cull_reason,
            embargo_until_step=r.embargo_until_step,
            metrics=SeedMetrics(
                seed_loss=_finite_or_zero(r.seed_improvement),
                val_loss_at_stage_start=_finite_or_zero(r.loss_at_stage_start),
                val_loss=_finite_or_zero(r.loss_now),
                accuracy_delta=0.0,
                params=self.seed_param_count(), grad_norm=r.grad_norm,
                non_finite_count=r.non_finite_count,
            ),
        )
        state.slot_shape.CopyFrom(self.shape)
        if r.last_gate:
            state.last_gate.ParseFromString(r.last_gate)
        if r.stage_changed_at:
            state.stage_changed_at.FromNanoseconds(int(r.stage_changed_at * 1e9))
        return state

    # ---- per step (no host sync) -----------------------------------------------------
    def on_step(self) -> None:
        """One training step happened (call after backward/optimizer step, before
        zero_grad): count it, ramp alpha, fold the seed's gradient health into device
        accumulators."""
        if not self.is_live():
            return
        self.record.steps_in_stage += 1
        if self.stage == S.SEED_STAGE_BLENDING:
            self._set_alpha_step(self.record.blend_step + 1)
        grads = [p.grad for p in self.seed_parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
            self.grad_norm_t.copy_(norm)
            self.non_finite_acc.add_((~torch.isfinite(norm)).to(torch.int64))

    def on_epoch(self) -> None:
        if self.is_live():
            self.record.epochs_in_stage += 1

    def _set_alpha_step(self, blend_step: int) -> None:
        sched = self.record.blend_schedule()
        self.record.blend_step = blend_step
        self.record.alpha = alpha_at(sched.curve, blend_step, sched.blend_steps)
        self.alpha_t.fill_(self.record.alpha)

    # ---- safe point (may sync) -----------------------------------------------------------
    def flush(self) -> None:
        """Read the device accumulators into the record (one sync)."""
        if not self.is_live() or self.seed is None:
            return
        values = torch.stack([self.non_finite_acc.double(), self.delta_acc.double(),
                              self.delta_count.double(), self.grad_norm_t.double()]).tolist()
        non_finite, delta, count, grad_norm = values
        self.record.non_finite_count = int(non_finite)
        if count > 0:
            self.record.seed_improvement = delta / count
        self.record.grad_norm = grad_norm if math.isfinite(grad_norm) else 0.0
        self.delta_acc.zero_()
        self.delta_count.zero_()

    def tripped(self, loss: float | None) -> str | None:
        """Why the circuit breaker trips for this seed now, or None."""
        if not self.is_live():
            return None
        if self.record.non_finite_count > 0:
            return f"{self.record.non_finite_count} NaN/Inf values in the seed's output or grads"
        blended = self.stage in lifecycle.BLENDED_STAGES
        base = self.record.loss_at_germination
        if loss is not None and blended and not math.isfinite(loss):
            return f"loss became {loss} while the seed is blended"
        if loss is not None and blended and math.isfinite(base) and base > 0 \
                and loss > self.cfg.loss_explosion_factor * base:
            return f"loss {loss:.4g} exceeds {self.cfg.loss_explosion_factor}x {base:.4g}"
        return None

    # ---- transitions -----------------------------------------------------------------
    def germinate(self, seed: nn.Module, *, step: int, blueprint_ref: str = "",
                  kernel_id: str = "", kernel_digest: str = "",
                  schedule: BlendSchedule | None = None, function_preserving: bool = True,
                  seed_id: str | None = None, loss: float | None = None) -> GateResult:
        """DORMANT -> GERMINATED with `seed` (already on the slot's device/dtype), if G0
        passes; raises IllegalTransition or GateRefused otherwise."""
        lifecycle.check_transition(self.stage, S.SEED_STAGE_GERMINATED)
        self._check_stack_open(step)
        inputs = self._probe(seed, backward=False, step=step)
        inputs.function_preserving_required = function_preserving
        result = gates.g0_germinate(inputs, self.cfg)
        if not result.passed:
            raise GateRefused(result, self.slot_id)
        self.record = SeedRecord(
            seed_id=seed_id or new_seed_id(), blueprint_ref=blueprint_ref,
            kernel_id=kernel_id, kernel_digest=kernel_digest,
            schedule=with_defaults(schedule).SerializeToString(), germinated_at_step=step,
        )
        self.seed = seed
        self._reset_accumulators()
        if self.cfg.seed_init == "bottleneck" and entry_linear(seed, self.shape.kind) is not None:
            self.__dict__["bottleneck"] = BottleneckStatistic(self.shape.channels, self.device)
        self._move(S.SEED_STAGE_GERMINATED, step, "germinated", result, loss)
        self._events.seed_added(self, self.seed_parameters())
        return result

    def advance(self, step: int, target: int | None = None, loss: float | None = None) -> GateResult:
        """Move to the next stage (or `target`, checked against the table) if its gate
        passes. Returns the GateResult; raises GateRefused / IllegalTransition."""
        nxt = lifecycle.next_stage(self.stage) if target is None else target
        if nxt is None:
            raise lifecycle.IllegalTransition(self.stage, S.SEED_STAGE_UNSPECIFIED)
        lifecycle.check_transition(self.stage, nxt)
        level = lifecycle.gate_for(self.stage, nxt)
        if level is None or level == gates.GateLevel.GATE_LEVEL_G0:
            raise lifecycle.IllegalTransition(self.stage, nxt)
        self.flush()
        if loss is not None:
            self.record.observe_loss(float(loss))
        inputs = self._gate_inputs(step)
        note = ""
        if level == gates.GateLevel.GATE_LEVEL_G1:
            note = self._initialise_from_bottleneck()
            inputs = self._probe(self.seed, backward=True, step=step)
        result = gates.evaluate(level, inputs, self.cfg)
        self.record.last_gate = result.SerializeToString()
        if not result.passed:
            raise GateRefused(result, self.slot_id)
        self._move(nxt, step, f"gate {gate_name(level)} passed{note}", result, loss)
        return result

    def cull(self, step: int, reason: int = CullReason.CULL_REASON_MANUAL, detail: str = "",
             embargo_steps: int = 0) -> None:
        """Remove the seed at once (any live stage), then embargo the slot."""
        lifecycle.check_transition(self.stage, S.SEED_STAGE_CULLED)
        why = CullReason.Name(reason).removeprefix("CULL_REASON_") + (f": {detail}" if detail else "")
        self.record.cull_reason = why
        self._move(S.SEED_STAGE_CULLED, step, why, None, None)
        self._drop_seed()
        embargo = embargo_steps or self.cfg.default_embargo_steps
        self.record.embargo_until_step = step + embargo
        self._move(S.SEED_STAGE_EMBARGOED, step, f"embargo {embargo} steps", None, None)

    def tick_embargo(self, step: int) -> None:
        """EMBARGOED -> RESETTING -> DORMANT once the embargo has elapsed."""
        if self.stage == S.SEED_STAGE_EMBARGOED and step >= self.record.embargo_until_step:
            self._move(S.SEED_STAGE_RESETTING, step, "embargo elapsed", None, None)
        if self.stage == S.SEED_STAGE_RESETTING:
            self._move(S.SEED_STAGE_DORMANT, step, "reset", None, None)
            self.record = SeedRecord(stage=S.SEED_STAGE_DORMANT)

    # ---- internals ---------------------------------------------------------------------
    def _check_stack_open(self, step: int) -> None:
        """A stacked slot germinates only on top of a fossil: its hook must run after the
        fossil hooks below it (the order unwrap() composes them in), and a seed grown on a
        layer whose last seed may still be culled would learn against a moving function."""
        below = self.below
        if below is None or below.stage == S.SEED_STAGE_FOSSILIZED:
            return
        detail = (f"slot {below.slot_id} below it is {lifecycle.stage_name(below.stage)}; "
                  f"{self.slot_id} opens once it has fossilized")
        result = GateResult(level=gates.GateLevel.GATE_LEVEL_G0, passed=False, step=step,
                            checks=[GateCheck(name="stack_open", passed=False, detail=detail)])
        raise GateRefused(result, self.slot_id)

    def _move(self, target: int, step: int, reason: str, gate: GateResult | None,
              loss: float | None) -> None:
        lifecycle.check_transition(self.stage, target)
        before = self.stage
        event = SeedTransition(
            seed_id=self.record.seed_id, slot_id=self.slot_id, from_stage=before,
            to_stage=target, step=step, reason=reason, blueprint_ref=self.record.blueprint_ref,
            seed_params=self.seed_param_count(),
        )
        if gate is not None:
            event.gate.CopyFrom(gate)
        r = self.record
        r.stage = target
        r.steps_in_stage = r.epochs_in_stage = 0
        r.stage_losses = []
        r.loss_at_stage_start = float("nan")
        r.stage_changed_at = time.time()
        if loss is not None:
            r.observe_loss(loss)
        if target == S.SEED_STAGE_BLENDING:
            self._set_alpha_step(0)
        elif target not in lifecycle.BLENDED_STAGES:
            r.alpha = 0.0 if target != S.SEED_STAGE_FOSSILIZED else 1.0
            self.alpha_t.fill_(r.alpha)
        else:
            r.alpha = 1.0
            self.alpha_t.fill_(1.0)
        if target == S.SEED_STAGE_FOSSILIZED:
            self._fossilize()
        else:
            self.install_hook()
        self._events.transition(event)

    def install_hook(self) -> None:
        """(Re)install the forward hook the current stage needs (none when dormant)."""
        self.remove_hook()
        if self.stage == S.SEED_STAGE_GERMINATED and self.bottleneck is not None:
            # Only observes: the seed is not in the forward until TRAINING.
            self._handles = [self.host_module.register_forward_hook(self.bottleneck.hook)]
            return
        factory = _HOOK_BY_STAGE.get(self.stage)
        if self.stage == S.SEED_STAGE_FOSSILIZED and not self.record.merged:
            factory = hooks.fossil_hook
        if factory is None or self.seed is None:
            return
        if isinstance(self.seed, WidenSeed):
            reader = self._host_root().get_submodule(self.seed.consumer_name)
            self._handles = [
                self.host_module.register_forward_hook(hooks.capture_hook(self.seed)),
                # First among the next layer's hooks: a seed in that layer's own slot then
                # sees the widened layer's output, as it will after unwrap().
                reader.register_forward_hook(factory(self, self.seed.take_tap), prepend=True),
            ]
        else:
            self._handles = [self.host_module.register_forward_hook(factory(self))]

    def remove_hook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _host_root(self) -> nn.Module:
        return self._events.host  # the MorphableModel's host (width seeds span two layers)

    def _fossilize(self) -> None:
        from esper.kasmina.merge import try_merge  # merge imports slot-free helpers only

        # A width seed stays a branch while training goes on (widening the host's tensors
        # would change optimizer state shapes); unwrap() merges it into wider layers.
        if not isinstance(self.seed, WidenSeed) and try_merge(self.host_module, self.seed, self.shape, self.device, self.dtype):
            params = self.seed_parameters()
            self.record.merged = True
            self.seed = None
            self._events.seed_removed(self, params)
        self.install_hook()

    def _initialise_from_bottleneck(self) -> str:
        """Set the seed's entry units from the statistic gathered while GERMINATED (see
        esper.kasmina.bottleneck), once, as it enters TRAINING; what was done, for the
        transition's reason ("" when nothing)."""
        stat, self.__dict__["bottleneck"] = self.bottleneck, None
        if stat is None or self.seed is None:
            return ""
        layer = entry_linear(self.seed, self.shape.kind)
        rows = stat.apply(layer)
        if rows == 0:
            return "; bottleneck init skipped: no gradient seen while germinated"
        return (f"; {rows} of {layer.out_features} entry units from the bottleneck of "
                f"{stat.samples} samples")

    def _drop_seed(self) -> None:
        self.__dict__["bottleneck"] = None
        self.remove_hook()
        params = self.seed_parameters()
        self.seed = None
        self._events.seed_removed(self, params)
        self._reset_accumulators()

    def _reset_accumulators(self) -> None:
        for buf in (self.non_finite_acc, self.delta_acc, self.delta_count, self.grad_norm_t):
            buf.zero_()

    def _gate_inputs(self, step: int) -> gates.GateInputs:
        r = self.record
        sched = r.blend_schedule()
        return gates.GateInputs(
            step=step, steps_in_stage=r.steps_in_stage,
            min_training_steps=sched.training_steps, min_shadow_steps=sched.shadow_steps,
            min_probation_steps=sched.probation_steps, seed_improvement=r.seed_improvement,
            non_finite_count=r.non_finite_count, alpha=r.alpha,
            loss_at_stage_start=r.loss_at_stage_start, loss_now=r.loss_now,
            loss_at_germination=r.loss_at_germination, stage_losses=list(r.stage_losses),
        )

    def _probe(self, seed: nn.Module, *, backward: bool, step: int) -> gates.GateInputs:
        """Run the seed on a fixed random probe of the slot's shape."""
        inputs = gates.GateInputs(step=step)
        gen = torch.Generator(device=self.device).manual_seed(PROBE_SEED)
        x = torch.randn(probe_shape(self.shape), generator=gen, device=self.device).to(self.dtype)
        expected = tuple(x.shape)
        try:
            if isinstance(seed, WidenSeed):  # reads the layer's input, adds to the next one's output
                x = seed.probe_input(2, gen, self.device, self.dtype)
                with torch.no_grad():
                    reader = self._host_root().get_submodule(seed.consumer_name)
                    # .forward: the layers' own computation, without the hooks of other seeds
                    h = run_path(seed.path, self.host_module.forward(x))
                    expected = tuple(reader.forward(h[:, :reader.weight.shape[1]]).shape)
            with torch.set_grad_enabled(backward):
                out = seed(x)
        except Exception as exc:  # a seed that cannot run is refused, never raised into training
            inputs.shape_detail = f"seed forward failed: {type(exc).__name__}: {exc}"
            return inputs
        inputs.shape_ok = tuple(out.shape) == expected
        inputs.shape_detail = f"seed output {tuple(out.shape)} for input {tuple(x.shape)}"
        inputs.forward_finite = bool(torch.isfinite(out).all())
        inputs.probe_abs_max = float(out.detach().abs().max()) if out.numel() else 0.0
        if backward and out.requires_grad:
            params = [p for p in seed.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out.float().square().sum() + out.float().sum(), params,
                                        allow_unused=True)
            inputs.backward_finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        else:
            inputs.backward_finite = backward  # no parameters: nothing can go wrong
        return inputs


_HOOK_BY_STAGE: dict[int, Callable] = {
    S.SEED_STAGE_TRAINING: hooks.training_hook,
    S.SEED_STAGE_BLENDING: hooks.blending_hook,
    S.SEED_STAGE_SHADOWING: hooks.blending_hook,
    S.SEED_STAGE_PROBATIONARY: hooks.blending_hook,
}


def _finite_or_zero(x: float) -> float:
    return x if math.isfinite(x) else 0.0
