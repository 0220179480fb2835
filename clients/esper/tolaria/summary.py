"""What a run did, as `session.summary()` returns it: a RunSummary whose `str()` reads as
a report (the run, each seed's life, parameters, training FLOPs, decisions).

The seed histories come from a SeedLog that follows the session's seed transitions (and
travels in checkpoints): per seed, its slot, blueprint, why it was germinated (the
decision's rationale), the stages with the step each was entered, and its fate with the
reason. The summary also answers `summary["key"]` with the keys of the dict it replaced
(`as_dict()`), so code written against that keeps working.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from esper.leyline.lifecycle import stage_name
from esper.leyline.v1 import lifecycle_pb2
from esper.leyline.v1.telemetry_pb2 import SeedTransition

# The stage ints as plain module constants: SeedStage.X goes through a Python __getattr__
# (~1 us each), on every decision and step.
S = lifecycle_pb2
FATES = {S.SEED_STAGE_FOSSILIZED: "fossilized", S.SEED_STAGE_CULLED: "culled"}


@dataclass
class SeedSummary:
    """One seed's life."""

    seed_id: str
    slot_id: str
    blueprint_ref: str
    why: str  # the germinate decision's rationale ("" when none was given)
    stages: list[tuple[str, int]] = field(default_factory=list)  # (stage, step entered)
    fate: str = "live"  # "fossilized", "culled" or "live"
    reason: str = ""  # of the last transition: the gate passed, or why it was culled
    params: int = 0  # the seed's trainable parameters when it germinated

    @property
    def stage(self) -> str:
        return self.stages[-1][0] if self.stages else ""

    def __str__(self) -> str:
        why = f" - {self.why}" if self.why else ""
        path = " -> ".join(f"{stage}@{step}" for stage, step in self.stages)
        fate = self.fate if self.fate != "live" else f"live ({self.stage})"
        return (f"{self.seed_id} in slot {self.slot_id}: {self.blueprint_ref} "
                f"({self.params:,} params){why}\n"
                f"    {path}: {fate}" + (f" ({self.reason})" if self.reason else ""))


class SeedLog:
    """Every seed's life in a run, from the session's seed transitions."""

    def __init__(self) -> None:
        self.seeds: list[SeedSummary] = []
        self._by_id: dict[str, SeedSummary] = {}

    def on_transition(self, event: SeedTransition, why: str = "") -> None:
        if event.to_stage == S.SEED_STAGE_GERMINATED:
            seed = SeedSummary(event.seed_id, event.slot_id, event.blueprint_ref, why,
                               params=event.seed_params)
            self.seeds.append(seed)
            self._by_id[event.seed_id] = seed
        seed = self._by_id.get(event.seed_id)
        if seed is None or seed.fate != "live":
            return  # EMBARGOED / RESETTING / DORMANT belong to the slot, not the seed
        seed.stages.append((stage_name(event.to_stage), int(event.step)))
        seed.reason = event.reason
        seed.fate = FATES.get(event.to_stage, "live")

    def state_dict(self) -> list[dict]:
        return [asdict(s) for s in self.seeds]

    def load_state_dict(self, state: list[dict]) -> None:
        self.seeds = [SeedSummary(**{**s, "stages": [(str(a), int(b)) for a, b in s["stages"]]})
                      for s in state]
        self._by_id = {s.seed_id: s for s in self.seeds}


@dataclass
class RunSummary:
    """A run at the time `session.summary()` was called (after `close()`: the final
    model, with every seed settled)."""

    run_id: str
    step: int
    epoch: int
    val_loss: float
    val_accuracy: float
    host_params_before: int  # the host's parameters at attach
    params_after: int  # every parameter now; after close, those of session.model.unwrap()
    seed_params: int  # of those, in seeds not merged into the host
    seeds: list[SeedSummary]
    # Decision acks: APPLIED, REJECTED, EXPIRED; WAIT decisions (acked APPLIED on the wire,
    # but nothing was done) are counted apart as waits.
    decisions: dict[str, int]
    # Training FLOPs estimated (esper.tolaria.flops): None when never measured.
    host_flops: float | None = None
    seed_flops: float | None = None
    # Telemetry events of the run that never reached the broker (the producer's buffer was
    # full, or events were still unsent at close): Nissa's history of the run lacks them.
    telemetry_dropped: int = 0
    # The residual stream's widenings, where the host declares one: each {"step", "epoch",
    # "from", "to", "params"} (esper.kasmina.stream).
    stream_widenings: list[dict] = field(default_factory=list)

    # ---- counts ----------------------------------------------------------------------------
    @property
    def seeds_germinated(self) -> int:
        return len(self.seeds)

    @property
    def seeds_fossilized(self) -> int:
        return sum(s.fate == "fossilized" for s in self.seeds)

    @property
    def seeds_culled(self) -> int:
        return sum(s.fate == "culled" for s in self.seeds)

    @property
    def live_seeds(self) -> int:
        return sum(s.fate == "live" for s in self.seeds)

    # ---- the dict it replaced --------------------------------------------------------------
    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "step": self.step, "epoch": self.epoch,
            "host_params_before": self.host_params_before, "params_after": self.params_after,
            "seed_params": self.seed_params, "seeds_germinated": self.seeds_germinated,
            "seeds_fossilized": self.seeds_fossilized, "seeds_culled": self.seeds_culled,
            "live_seeds": self.live_seeds, "acks": dict(self.decisions),
            "val_loss": self.val_loss, "val_accuracy": self.val_accuracy,
            "host_flops": self.host_flops, "seed_flops": self.seed_flops,
            "telemetry_dropped": self.telemetry_dropped,
            "stream_widenings": [dict(w) for w in self.stream_widenings],
            "seeds": [asdict(s) for s in self.seeds],
        }

    def __getitem__(self, key: str):
        return self.as_dict()[key]

    def get(self, key: str, default=None):
        return self.as_dict().get(key, default)

    def keys(self):
        return self.as_dict().keys()

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    # ---- the report ------------------------------------------------------------------------
    def __str__(self) -> str:
        d = self.decisions
        lines = [
            f"run {self.run_id}: {self.epoch} epochs, {self.step} steps; validation loss "
            f"{_num(self.val_loss, '.4f')}, accuracy {_pct(self.val_accuracy)}",
            f"parameters: host {self.host_params_before:,} at attach -> {self.params_after:,} "
            f"final ({self.seed_params:,} in unmerged seeds)",
            f"training FLOPs (estimate): host {_flops(self.host_flops)}, seeds "
            f"{_flops(self.seed_flops)}",
            f"seeds: {self.seeds_germinated} germinated, {self.seeds_fossilized} fossilized, "
            f"{self.seeds_culled} culled, {self.live_seeds} live",
            f"decisions: {d.get('applied', 0)} applied, {d.get('waits', 0)} waits, "
            f"{d.get('rejected', 0)} rejected, {d.get('expired', 0)} expired",
        ]
        if self.telemetry_dropped:
            lines.append(f"telemetry: {self.telemetry_dropped:,} events dropped, never sent "
                         f"to the broker (Nissa's history of this run is incomplete)")
        lines += [f"residual stream widened {w['from']} -> {w['to']} at step {w['step']} "
                  f"(epoch {w['epoch']}, {w['params']:,} params)" for w in self.stream_widenings]
        lines += [f"  {seed}" for seed in self.seeds]
        return "\n".join(lines)


def _num(x: float, spec: str) -> str:
    return format(x, spec) if math.isfinite(x) else "n/a"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%" if math.isfinite(x) else "n/a"


def _flops(x: float | None) -> str:
    return "not measured" if x is None else f"{x:.3g}"
