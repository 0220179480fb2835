"""How `esper runs` presents a run from Nissa: each seed's life (slot, blueprint, stages with
the step each began, fate and reason) and two runs side by side (a grown run and its static
baseline). Pure functions of the GetRunSummary messages, so they test without a server."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from esper.leyline.lifecycle import FINAL_STAGES, stage_name
from esper.leyline.v1 import nissa_pb2, telemetry_pb2


@dataclass
class SeedLife:
    """One seed from germination to its fate (or to now, while it lives)."""

    seed_id: str
    slot_id: str
    blueprint_ref: str = ""
    params: int = 0
    stages: list[tuple[str, int]] = field(default_factory=list)  # (stage, step it began)
    fate: str = "live"
    reason: str = ""

    def __str__(self) -> str:
        path = " -> ".join(f"{name}@{step}" for name, step in self.stages)
        why = f" ({self.reason})" if self.reason else ""
        size = f", {self.params} params" if self.params else ""
        return (f"{self.seed_id} in {self.slot_id}: {self.blueprint_ref or '?'}{size}\n"
                f"    {path}\n    fate: {self.fate}{why}")


def seed_lives(timeline: list[telemetry_pb2.SeedTransition]) -> list[SeedLife]:
    """Group a run's seed transitions by seed, in order of germination."""
    lives: dict[str, SeedLife] = {}
    for t in sorted(timeline, key=lambda t: t.step):
        key = t.seed_id or f"?@{t.slot_id}"
        life = lives.get(key)
        if life is None:
            life = lives[key] = SeedLife(seed_id=t.seed_id or "?", slot_id=t.slot_id or "?")
        life.blueprint_ref = t.blueprint_ref or life.blueprint_ref
        life.params = t.seed_params or life.params
        life.stages.append((stage_name(t.to_stage), t.step))
        if t.to_stage in FINAL_STAGES:
            life.fate, life.reason = stage_name(t.to_stage).lower(), t.reason
        elif life.fate.startswith("live"):  # embargo and reset after a cull keep the cull
            life.fate = f"live ({stage_name(t.to_stage)})"
    return list(lives.values())


def compare_runs(a: nissa_pb2.GetRunSummaryResponse,
                 b: nissa_pb2.GetRunSummaryResponse) -> str:
    """A table of two runs' epochs (validation accuracy, loss, parameters) and a verdict."""
    ids = (a.run.run_id, b.run.run_id)
    by_epoch = [{p.epoch: p for p in s.epochs} for s in (a, b)]
    lines = [f"A = {ids[0]}", f"B = {ids[1]}", "",
             f"  {'EPOCH':>5} {'A VAL ACC':>9} {'B VAL ACC':>9} {'A-B (pp)':>8} "
             f"{'A VAL LOSS':>10} {'B VAL LOSS':>10} {'A PARAMS':>9} {'B PARAMS':>9}"]
    for epoch in sorted(set(by_epoch[0]) | set(by_epoch[1])):
        pa, pb = by_epoch[0].get(epoch), by_epoch[1].get(epoch)
        lines.append(
            f"  {epoch:>5} {_acc(pa):>9} {_acc(pb):>9} {_diff(pa, pb):>8} {_loss(pa):>10} "
            f"{_loss(pb):>10} {_params(pa):>9} {_params(pb):>9}")
    last_a, last_b = (s.epochs[-1] if s.epochs else None for s in (a, b))
    lines += ["", _verdict(ids, last_a, last_b)]
    return "\n".join(lines)


def _verdict(ids: tuple[str, str], a: nissa_pb2.EpochPoint | None,
             b: nissa_pb2.EpochPoint | None) -> str:
    if a is None or b is None:
        return "no epochs to compare yet"
    diff = 100 * (a.val_accuracy - b.val_accuracy)
    return (f"final validation accuracy: A {100 * a.val_accuracy:.2f}% vs B "
            f"{100 * b.val_accuracy:.2f}% ({diff:+.2f} pp) with {a.total_params} vs "
            f"{b.total_params} parameters (one run each: a single seed says little; see the "
            f"morphogenesis experiment for paired results)")


def measured(value: float) -> str:
    """A validation number as the report prints it; "unknown" before any was measured (a
    seed settled before the first validation pass reports NaN)."""
    return f"{value:.4f}" if math.isfinite(value) else "unknown"


def _acc(p) -> str:
    return f"{100 * p.val_accuracy:.2f}%" if p is not None and math.isfinite(p.val_accuracy) \
        else "-"


def _diff(pa, pb) -> str:
    if pa is None or pb is None:
        return "-"
    return f"{100 * (pa.val_accuracy - pb.val_accuracy):+.2f}"


def _loss(p) -> str:
    return f"{p.val_loss:.4f}" if p is not None else "-"


def _params(p) -> str:
    return str(p.total_params) if p is not None else "-"
