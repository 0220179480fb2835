"""The plain-Python record of the seed occupying a slot (everything but tensors)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from esper.leyline.v1.control_pb2 import BlendSchedule
from esper.leyline.v1.lifecycle_pb2 import SeedStage

NAN = float("nan")


@dataclass
class SeedRecord:
    """What Kasmina knows about the seed in one slot; reset to defaults when dormant."""

    stage: int = SeedStage.SEED_STAGE_DORMANT
    seed_id: str = ""
    blueprint_ref: str = ""
    kernel_id: str = ""
    kernel_digest: str = ""
    schedule: bytes = b""  # serialized BlendSchedule (plain bytes, checkpoint-friendly)
    steps_in_stage: int = 0
    epochs_in_stage: int = 0
    blend_step: int = 0
    germinated_at_step: int = 0
    alpha: float = 0.0
    merged: bool = False
    cull_reason: str = ""
    embargo_until_step: int = 0
    non_finite_count: int = 0
    seed_improvement: float = NAN
    loss_at_germination: float = NAN
    loss_at_stage_start: float = NAN
    loss_now: float = NAN
    stage_losses: list[float] = field(default_factory=list)
    grad_norm: float = 0.0
    last_gate: bytes = b""  # serialized GateResult
    stage_changed_at: float = 0.0  # wall-clock seconds

    def blend_schedule(self) -> BlendSchedule:
        return BlendSchedule.FromString(self.schedule)

    def to_dict(self) -> dict:
        """Plain data: serialized protos as hex strings (torch.load(weights_only=True)
        accepts str, not bytes)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _BYTES_FIELDS:
            out[name] = out[name].hex()
        out["stage_losses"] = list(self.stage_losses)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SeedRecord:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown seed record fields: {sorted(unknown)}")
        data = dict(data)
        for name in _BYTES_FIELDS:
            if isinstance(data.get(name), str):
                data[name] = bytes.fromhex(data[name])
        rec = cls(**data)
        rec.stage_losses = list(rec.stage_losses)
        return rec

    def observe_loss(self, loss: float) -> None:
        """A loss measured with the seed in place (validation when available)."""
        if not math.isfinite(loss):
            return
        if math.isnan(self.loss_at_stage_start):
            self.loss_at_stage_start = loss
        if math.isnan(self.loss_at_germination):
            self.loss_at_germination = loss
        self.loss_now = loss
        self.stage_losses.append(loss)


_BYTES_FIELDS = ("schedule", "last_gate")
