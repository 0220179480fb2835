"""Field reports: one FieldReport per seed that ends FOSSILIZED or CULLED, with the
validation metrics before germination and at the end, parameters added and lifetime."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from esper.leyline.lifecycle import FINAL_STAGES
from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.control_pb2 import CullReason
from esper.leyline.v1.telemetry_pb2 import FieldReport, SeedTransition

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2


@dataclass
class SeedBirth:
    """What was known when a seed germinated."""

    seed_id: str
    blueprint_ref: str
    kernel_id: str
    decision_id: str
    step: int
    val_loss: float
    val_accuracy: float
    params: int


class SeedOutcomes:
    """Follows seed transitions; returns a FieldReport when a seed's life ends."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.births: dict[str, SeedBirth] = {}  # slot id -> the seed living there
        self.fossilized = 0
        self.culled = 0

    def on_transition(self, event: SeedTransition, *, kernel_id: str, decision_id: str,
                      val_loss: float, val_accuracy: float) -> FieldReport | None:
        if event.to_stage == S.SEED_STAGE_GERMINATED:
            self.births[event.slot_id] = SeedBirth(
                event.seed_id, event.blueprint_ref, kernel_id, decision_id, event.step,
                val_loss, val_accuracy, event.seed_params)
            return None
        if event.to_stage not in FINAL_STAGES:
            return None
        birth = self.births.pop(event.slot_id, None)
        if birth is None or birth.seed_id != event.seed_id:
            return None
        fossil = event.to_stage == S.SEED_STAGE_FOSSILIZED
        self.fossilized += fossil
        self.culled += not fossil
        return FieldReport(
            run_id=self.run_id, seed_id=event.seed_id, slot_id=event.slot_id,
            blueprint_ref=birth.blueprint_ref, kernel_id=birth.kernel_id,
            germinate_decision_id=birth.decision_id, final_stage=event.to_stage,
            val_loss_before=birth.val_loss, val_loss_after=val_loss,
            val_accuracy_before=birth.val_accuracy, val_accuracy_after=val_accuracy,
            params_added=(event.seed_params or birth.params) if fossil else 0,
            lifetime_steps=event.step - birth.step, cull_reason=_cull_reason(event.reason),
            germinated_at_step=birth.step, ended_at_step=event.step,
        )

    def state_dict(self) -> dict:
        return {"births": {k: asdict(v) for k, v in self.births.items()},
                "fossilized": self.fossilized, "culled": self.culled}

    def load_state_dict(self, state: dict) -> None:
        self.births = {k: SeedBirth(**v) for k, v in state["births"].items()}
        self.fossilized, self.culled = int(state["fossilized"]), int(state["culled"])


def _cull_reason(reason_text: str) -> int:
    """Kasmina writes the cull reason's name first ("REGRESSION: detail")."""
    name = "CULL_REASON_" + reason_text.split(":", 1)[0].strip()
    try:
        return CullReason.Value(name)
    except ValueError:
        return CullReason.CULL_REASON_UNSPECIFIED
