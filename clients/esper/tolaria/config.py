"""Tolaria's settings, each with the reason for its default."""

from __future__ import annotations

from dataclasses import dataclass, field

from esper.leyline.ids import new_run_id, validate_run_id

# Steps between two training snapshots when the policy source does not say (a remote
# Tamiyo sends its own N in SessionAccept): often enough that a plateau or a sick seed is
# seen within a fraction of an epoch, rarely enough that the one host sync it costs
# (reading the device accumulators) is noise.
DEFAULT_SNAPSHOT_EVERY = 20
# What to do while a remote Tamiyo is unreachable: keep growing with the in-process
# heuristic ("local") or only train ("none").
OUTAGE_MODES = ("local", "none")
# Layer health observes 1 training step in this many: a 20-step snapshot window still gets
# 2 samples of whole-batch statistics (enough for a mean and a spread of the gradient
# norm), while a sampled step costs a few tensor reductions per slot plus the gradient
# norms, ~0.5 ms in a 3-4 ms CPU step. Measured (bench_tolaria_session's interleaved
# windows, 2-core machine): 1 in 4 cost 1.080x (MLP) and 1.096x (digits CNN), 1 in 10
# 1.062x and 1.063x; a 40-epoch digits run with the local policy made the same 59 seed
# transitions and 120 decisions with either.
DEFAULT_HEALTH_SAMPLE_EVERY = 10


@dataclass
class TolariaConfig:
    """How a training session talks to its policy and to telemetry."""

    run_id: str = field(default_factory=new_run_id)
    # Snapshot (and local-policy decision) period in steps; a remote accept overrides it.
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    # Kafka bootstrap for telemetry through Oona; None publishes nothing.
    kafka_bootstrap: str | None = None
    # Show a tqdm bar per epoch (the Trainer only; hook users own their output).
    progress: bool = True
    # Remote-policy outage behaviour, one of OUTAGE_MODES.
    on_outage: str = "local"
    # Layer-health sampling period in training steps (1 = observe every step).
    health_sample_every: int = DEFAULT_HEALTH_SAMPLE_EVERY

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse bad settings with ValueError naming the setting (run at construction and
        again by attach(), since a dataclass field can be reassigned in between)."""
        try:
            validate_run_id(self.run_id)
        except ValueError as exc:
            raise ValueError(f"run_id: {exc}") from None
        if self.snapshot_every <= 0:
            raise ValueError(f"snapshot_every must be > 0, got {self.snapshot_every}")
        if self.health_sample_every <= 0:
            raise ValueError(f"health_sample_every must be > 0, got {self.health_sample_every}")
        if self.on_outage not in OUTAGE_MODES:
            raise ValueError(f"on_outage must be one of {OUTAGE_MODES}, got {self.on_outage!r}")
