"""Tamiyo's typed config (flags, ESPER_* env, TOML [tamiyo])."""

from __future__ import annotations

from dataclasses import dataclass

from esper.runtime.config import ConfigError, ServerConfig, check_address, check_choice, check_url
from esper.runtime.processes import ProcessesSettings
from esper.runtime.settings import KafkaSettings, UrzaClientSettings

POLICY_NAMES = ("heuristic", "gnn")


@dataclass(frozen=True)
class TamiyoConfig(KafkaSettings, UrzaClientSettings, ProcessesSettings, ServerConfig):
    # Publish every decision on Oona (esper.control.decisions) for Nissa's run history.
    publish_events: bool = True
    # Policy of a session that names none.
    default_policy: str = "heuristic"
    # Learned policy artifact (safetensors) loaded at start; empty: the gnn policy is unloaded.
    gnn_artifact: str = ""
    # Expected SHA-256 of gnn_artifact; empty skips the file-digest check (the tensors'
    # own digest inside the file is always checked).
    gnn_artifact_sha256: str = ""
    # ReloadPolicy only reads artifacts inside this directory (empty: <state_dir>/policies),
    # so a client cannot make the server read arbitrary files.
    policy_dir: str = ""
    # Clients send a snapshot every this many steps (told in SessionAccept).
    snapshot_every_steps: int = 10
    # Both sides send a heartbeat at least this often (seconds).
    heartbeat_seconds: int = 5
    # A session with no client message for this many heartbeat periods is closed.
    idle_heartbeats: int = 3
    # Seconds a SearchKernels call to Urza may take before the decision goes on without it.
    urza_timeout_s: float = 1.0
    # Seconds Urza's candidates for one slot shape and budget are reused (dropped earlier
    # on any catalogue change).
    candidate_cache_s: float = 30.0
    # HOST:PORT of Tezzeret, asked to compile the built-in blueprints a session's slots need
    # when Urza has no kernel for them (see kernel_supply.py); empty: never ask.
    tezzeret_address: str = "127.0.0.1:50052"
    # Seconds a SubmitCompile (or the ListKernels before it) may take; runs in the
    # background, never in a decision.
    compile_request_timeout_s: float = 5.0
    # TOML file of heuristic thresholds (keys: the fields of HeuristicConfig); empty: the
    # defaults, which suit long runs.
    heuristic_config: str = ""
    # Largest model graph accepted (nodes); bigger opens are INVALID_ARGUMENT.
    max_graph_nodes: int = 4096
    # Largest number of seed slots accepted.
    max_slots: int = 512
    # Largest model graph accepted, in serialized bytes (runs keep their graph).
    max_graph_bytes: int = 1024 * 1024
    # Graph bytes kept over all remembered runs; past it the least recently used run is
    # forgotten first, as past max_runs.
    max_run_graph_bytes: int = 256 * 1024 * 1024
    # Session streams open at once, on the server and per client; more are refused with
    # RESOURCE_EXHAUSTED.
    max_sessions: int = 1000
    max_sessions_per_client: int = 64
    # Seconds a new Session stream may take to send its open; then DEADLINE_EXCEEDED.
    open_timeout_s: float = 10.0
    # Responses queued per Session stream for a client that is slow to read; a client that
    # reads nothing for session_send_timeout_s while it is full is cut (RESOURCE_EXHAUSTED).
    session_send_queue: int = 64
    session_send_timeout_s: float = 30.0
    # torch intra-op threads for the learned policy: its matrices are tiny, so one thread is
    # fastest and leaves the other cores to the event loop and other sessions.
    torch_threads: int = 1
    # Milliseconds a learned-policy decision waits for others (any session's) to run with
    # it as one batch, one forward for all; 0: each runs alone as it arrives. Decisions that
    # arrive while every worker is busy go together in any case (esper.tamiyo.batcher).
    gnn_batch_window_ms: float = 0.5
    # Threads the learned policy's batches run on, off the event loop.
    gnn_workers: int = 1
    # Runs whose state is kept for resumption; the least recently used is forgotten first.
    max_runs: int = 1000
    # Largest step (and sequence) advance between two accepted snapshots of a run; a
    # snapshot further ahead is dropped with a `step_jump` SessionWarning.
    max_step_advance: int = 1_000_000
    # Runs one identity keeps remembered (its least recently used forgotten first), so one
    # client cannot push other owners' runs out of max_runs and then claim their ids.
    max_runs_per_owner: int = 250
    # Field reports one identity may send per minute on its sessions (beyond: dropped
    # with a `quota_exceeded` SessionWarning).
    field_reports_per_minute: int = 120
    # asyncpg DSN of the database that keeps every run's state (schema `tamiyo`), shared by
    # all replicas: a session resumes on any of them, and a restarted one forgets nothing.
    # Empty: runs are kept in this process only (one replica; a restart forgets them).
    postgres_dsn: str = ""
    # Seconds to wait for that database at start before failing fast.
    postgres_connect_timeout: float = 5.0

    def validate(self) -> None:
        super().validate()
        check_choice("default_policy", self.default_policy, POLICY_NAMES)
        checks = (
            ("snapshot_every_steps", 1 <= self.snapshot_every_steps <= 1_000_000),
            ("heartbeat_seconds", 1 <= self.heartbeat_seconds <= 3600),
            ("idle_heartbeats", 1 <= self.idle_heartbeats <= 100),
            ("urza_timeout_s", 0 < self.urza_timeout_s <= 60),
            ("candidate_cache_s", 0 <= self.candidate_cache_s <= 3600),
            ("compile_request_timeout_s", 0 < self.compile_request_timeout_s <= 300),
            ("max_graph_nodes", 1 <= self.max_graph_nodes <= 1_000_000),
            ("max_slots", 1 <= self.max_slots <= 100_000),
            ("max_graph_bytes", 1024 <= self.max_graph_bytes <= 16 * 1024 * 1024),
            ("max_run_graph_bytes", self.max_graph_bytes <= self.max_run_graph_bytes <= 2**40),
            ("max_sessions", 1 <= self.max_sessions <= 1_000_000),
            ("max_sessions_per_client", 1 <= self.max_sessions_per_client <= self.max_sessions),
            ("open_timeout_s", 0 < self.open_timeout_s <= 3600),
            ("session_send_queue", 1 <= self.session_send_queue <= 100_000),
            ("session_send_timeout_s", 0 < self.session_send_timeout_s <= 3600),
            ("max_runs", 1 <= self.max_runs <= 1_000_000),
            ("max_step_advance", 1 <= self.max_step_advance <= 2**53),
            ("max_runs_per_owner", 1 <= self.max_runs_per_owner <= 1_000_000),  # capped by max_runs
            ("field_reports_per_minute", 1 <= self.field_reports_per_minute <= 1_000_000),
            ("torch_threads", 1 <= self.torch_threads <= 256),
            ("gnn_batch_window_ms", 0 <= self.gnn_batch_window_ms <= 100),
            ("gnn_workers", 1 <= self.gnn_workers <= 256),
        )
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"{name}: {getattr(self, name)!r} is out of range")
        if self.heuristic_config:
            from esper.tamiyo.heuristic_file import load_heuristic_config

            load_heuristic_config(self.heuristic_config)
        if self.tezzeret_address:
            check_address("tezzeret_address", self.tezzeret_address)
        if self.postgres_dsn:
            check_url("postgres_dsn", self.postgres_dsn, ("postgresql", "postgres"))
        elif self.processes > 1:  # a client reconnecting may reach another process
            raise ConfigError(f"processes: {self.processes} processes need postgres_dsn: a session that "
                              "reconnects may reach another process, which must find its run there")
        if not 0 < self.postgres_connect_timeout <= 120:
            raise ConfigError("postgres_connect_timeout: must be within (0, 120] seconds")
        if self.gnn_artifact_sha256 and len(self.gnn_artifact_sha256) != 64:
            raise ConfigError("gnn_artifact_sha256: must be 64 hex digits")

    @property
    def idle_timeout_seconds(self) -> int:
        """A session with no client message for this long is closed (told in SessionAccept)."""
        return self.heartbeat_seconds * self.idle_heartbeats

    @property
    def resolved_policy_dir(self) -> str:
        return self.policy_dir or f"{self.state_dir}/policies"
