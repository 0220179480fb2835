"""Nissa's typed configuration (flags, ESPER_* env vars, TOML [nissa] table)."""

from __future__ import annotations

from dataclasses import dataclass

from esper.nissa.alerts import AlertThresholds
from esper.runtime.config import ConfigError, ServerConfig
from esper.runtime.settings import KafkaSettings, PostgresSettings

# Records per ingest transaction at most: big enough for COPY to pay off, small enough
# that a redelivered batch after a crash is quick to re-apply.
MAX_INGEST_BATCH = 50_000
# More ingest workers than partitions of the busiest topic (4) leave some idle.
MAX_INGEST_WORKERS = 16


@dataclass(frozen=True)
class NissaConfig(PostgresSettings, KafkaSettings, ServerConfig):
    # Kafka consumer group of the ingest; every Nissa of one deployment shares it.
    consumer_group: str = "esper-nissa-ingest"
    # Records per ingest batch (one database transaction).
    ingest_batch_max: int = 5_000
    # Ingest worker processes (members of the consumer group); 0 ingests inside the server
    # process. One process stores ~30k events/s; two use a second core.
    ingest_workers: int = 2
    # Seconds between checks for services whose heartbeat went missing.
    heartbeat_check_s: float = 5.0
    # Alert: train loss above this multiple of the run's best train loss.
    alert_loss_divergence_factor: float = 3.0
    # Alert: snapshots a run needs before divergence is judged.
    alert_loss_divergence_min_snapshots: int = 5
    # Alert: minimum rise of the train loss above its best (loss units) for divergence.
    alert_loss_divergence_min_rise: float = 0.5
    # Alert: acks per run in the rejection-rate window.
    alert_rejection_window: int = 20
    # Alert: rejected fraction of the window that raises an alert.
    alert_rejection_rate: float = 0.5
    # Alert: acks needed in the window before the rate is judged.
    alert_rejection_min_acks: int = 5
    # Alert: seconds between two telemetry-drop alerts of one run.
    alert_drop_cooldown_s: float = 60.0
    # Alert: heartbeat intervals without a beat before a service counts as missing.
    alert_heartbeat_grace_factor: float = 3.0

    def validate(self) -> None:
        super().validate()
        if not self.consumer_group.strip():
            raise ConfigError("consumer_group: must not be empty")
        if not 1 <= self.ingest_batch_max <= MAX_INGEST_BATCH:
            raise ConfigError(f"ingest_batch_max: must be within [1, {MAX_INGEST_BATCH}]")
        if not 0 <= self.ingest_workers <= MAX_INGEST_WORKERS:
            raise ConfigError(f"ingest_workers: must be within [0, {MAX_INGEST_WORKERS}]")
        if not 0.1 <= self.heartbeat_check_s <= 3600:
            raise ConfigError("heartbeat_check_s: must be within [0.1, 3600]")
        if not self.alert_loss_divergence_factor > 1:
            raise ConfigError("alert_loss_divergence_factor: must be > 1")
        if self.alert_loss_divergence_min_snapshots < 1:
            raise ConfigError("alert_loss_divergence_min_snapshots: must be >= 1")
        if not self.alert_loss_divergence_min_rise >= 0:
            raise ConfigError("alert_loss_divergence_min_rise: must be >= 0")
        if not 1 <= self.alert_rejection_window <= 10_000:
            raise ConfigError("alert_rejection_window: must be within [1, 10000]")
        if not 0 <= self.alert_rejection_rate < 1:
            raise ConfigError("alert_rejection_rate: must be within [0, 1)")
        if not 1 <= self.alert_rejection_min_acks <= self.alert_rejection_window:
            raise ConfigError(
                "alert_rejection_min_acks: must be within [1, alert_rejection_window]"
            )
        if self.alert_drop_cooldown_s < 0:
            raise ConfigError("alert_drop_cooldown_s: must be >= 0")
        if not self.alert_heartbeat_grace_factor >= 1:
            raise ConfigError("alert_heartbeat_grace_factor: must be >= 1")

    def thresholds(self) -> AlertThresholds:
        return AlertThresholds(
            loss_divergence_factor=self.alert_loss_divergence_factor,
            loss_divergence_min_snapshots=self.alert_loss_divergence_min_snapshots,
            loss_divergence_min_rise=self.alert_loss_divergence_min_rise,
            rejection_window=self.alert_rejection_window,
            rejection_rate=self.alert_rejection_rate,
            rejection_min_acks=self.alert_rejection_min_acks,
            drop_alert_cooldown_s=self.alert_drop_cooldown_s,
            heartbeat_grace_factor=self.alert_heartbeat_grace_factor,
        )
