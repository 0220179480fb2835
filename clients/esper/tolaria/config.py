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
# Activation statistics (mean, spread, dead and saturated fractions, NaN/Inf counts) are
# taken on 1 training step in this many: once per default snapshot window. Each is a
# whole-batch average, thousands of values from one step (32 x 256 in the MLP below),
# while its forward hooks cost ~0.4 ms per sampled step of a 1.8 ms CPU MLP step in a
# training loop (cold caches: five NumPy calls per slot and the hooks themselves), so a
# second sample per window would be 1% of the step for little information. Gradient
# norms keep health_sample_every, for their spread across a window. With the local policy,
# 1 in 20 and 1 in 10 made the same seed transitions, decisions and validation accuracies
# on the digits CNN (3 seeds x 40 epochs) and the Fashion-MNIST MLP (6,000 images, batch
# 32, 2 seeds x 12 epochs, with germinations).
DEFAULT_HEALTH_ACTIVATION_EVERY = 20
# The learning rate a seed's param group starts at when its decision sets none
# (esper.tolaria.optim): "follow" the host's current rate, or "rewarm" to the host's
# initial rate (a scheduler's `initial_lr`) when the schedule has decayed below it.
SEED_LR_RULES = ("follow", "rewarm")


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
    # Layer-health sampling period in training steps (1 = observe every step): gradient
    # norms, and activations (the forward hooks) on 1 step in health_activation_every.
    health_sample_every: int = DEFAULT_HEALTH_SAMPLE_EVERY
    health_activation_every: int = DEFAULT_HEALTH_ACTIVATION_EVERY
    # How a seed's param group starts when its decision sets no rate, one of SEED_LR_RULES.
    seed_lr: str = "follow"

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
        if self.health_activation_every <= 0:
            raise ValueError("health_activation_every must be > 0, got "
                             f"{self.health_activation_every}")
        if self.seed_lr not in SEED_LR_RULES:
            raise ValueError(f"seed_lr must be one of {SEED_LR_RULES}, got {self.seed_lr!r}")
        if self.on_outage not in OUTAGE_MODES:
            raise ValueError(f"on_outage must be one of {OUTAGE_MODES}, got {self.on_outage!r}")
