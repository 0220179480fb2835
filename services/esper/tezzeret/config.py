"""Tezzeret's typed configuration (flags, ESPER_* env vars, TOML [tezzeret] table)."""

from __future__ import annotations

from dataclasses import dataclass

from esper.runtime.config import ConfigError, ServerConfig
from esper.runtime.settings import KafkaSettings, PostgresSettings, UrzaClientSettings

# Most in-process workers: each holds a consumer-group membership and a torch job at a
# time; beyond a handful they only contend for the same CPU cores.
MAX_WORKERS = 16
# Most timed forwards per latency measurement: enough for a stable p99, bounded so a
# misconfiguration cannot make one job run for minutes.
MAX_LATENCY_SAMPLES = 10_000


@dataclass(frozen=True)
class TezzeretConfig(PostgresSettings, KafkaSettings, UrzaClientSettings, ServerConfig):
    # No object-store settings: kernel bytes go to Urza through its API (UploadKernel).
    # Compile workers run inside the server process (0: only standalone `esper tezzeret worker`s).
    workers: int = 1
    # Kafka consumer group the workers join; every worker of one deployment shares it.
    consumer_group: str = "esper-tezzeret"
    # Timed forward passes per kernel for the latency p50/p99 figures.
    latency_samples: int = 50
    # Untimed forward passes before timing (allocator and kernel caches warm up).
    warmup_runs: int = 3
    # Seconds a worker's claim on a job lasts without renewal; after it, another worker
    # may take the job over (a killed worker's job is finished by someone else).
    job_lease_s: float = 30.0
    # QUEUED/in-progress jobs whose request was last published longer ago than this are
    # re-published from the database (a broker restart loses the topic's data).
    republish_after_s: float = 60.0
    # How often the server sweeps for such jobs.
    republish_interval_s: float = 15.0
    # Try torch.export on each kernel and record whether it is kept or dropped.
    try_export: bool = True
    # Also try torch.compile (needs a C++ toolchain on CPU; slow to compile on small hosts).
    try_compile: bool = False
    # Seconds an RPC waits for PostgreSQL or Urza before answering UNAVAILABLE (an upload
    # to Urza gets more, by its size).
    dependency_timeout_s: float = 5.0
    # SubmitCompile calls one identity may make per minute (a burst up to this passes);
    # beyond it RESOURCE_EXHAUSTED says when to retry.
    compile_jobs_per_minute: int = 120

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.compile_jobs_per_minute <= 1_000_000:
            raise ConfigError("compile_jobs_per_minute: must be within [1, 1000000]")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers: {self.workers} is not within [0, {MAX_WORKERS}]")
        if not self.consumer_group.strip():
            raise ConfigError("consumer_group: must not be empty")
        if not 1 <= self.latency_samples <= MAX_LATENCY_SAMPLES:
            raise ConfigError(f"latency_samples: must be within [1, {MAX_LATENCY_SAMPLES}]")
        if not 0 <= self.warmup_runs <= MAX_LATENCY_SAMPLES:
            raise ConfigError(f"warmup_runs: must be within [0, {MAX_LATENCY_SAMPLES}]")
        if not 0.5 <= self.job_lease_s <= 3600:
            raise ConfigError("job_lease_s: must be within [0.5, 3600] seconds")
        if not 1 <= self.republish_after_s <= 86_400:
            raise ConfigError("republish_after_s: must be within [1, 86400] seconds")
        if not 0.1 <= self.republish_interval_s <= 3600:
            raise ConfigError("republish_interval_s: must be within [0.1, 3600] seconds")
        if not 0.1 <= self.dependency_timeout_s <= 120:
            raise ConfigError("dependency_timeout_s: must be within [0.1, 120] seconds")
        if not self.urza_address:
            raise ConfigError("urza_address: Tezzeret registers kernels in Urza; it must be set")
