"""Tamiyo under load, as replicas: many concurrent training sessions against 2 Tamiyo
processes sharing their runs in PostgreSQL, one replica killed in the middle.

Starts PostgreSQL (the local stack's launcher, durable like `esper up`) and two `esper
serve tamiyo` processes on loopback, then runs N simulated training sessions (default 50)
in this process, started over `--ramp-s`, each its own channel on the replicas' address
list (round robin, as a Tolaria process would) and its own real Session stream: a snapshot
every `--step-ms` x `--snapshot-every` ms (20 ms x 10 steps: a small model's step at
Tamiyo's default cadence; a 100-node graph with 25 slots, tamiyo_workload.py's snapshots,
so each snapshot earns a decision; an epoch end with its validation loss every
`--epoch-snapshots` snapshots), each decision acked. Halfway, one replica is SIGKILLed: its sessions see
their stream break, re-open through the same address list on the survivor and must be
accepted as *resumed* (the run state came from PostgreSQL). A session that cannot resume
within `--resume-timeout-s` or resumes as a new run is lost (must be 0).

Measures decisions per second, the decision latency (snapshot sent -> its decision read)
p50/p99 over all sessions, the sessions lost and each moved session's hand-over time; then
one session alone against the surviving replica, for the latency ratio under load (same
run, same machine). Prints and writes JSON to benchmarks/results/bench_tamiyo_load.json.

    .venv/bin/python benchmarks/bench_tamiyo_load.py [--sessions 50] [--duration-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# Run as a script, this directory is on sys.path.
from tamiyo_workload import Stream, free_port, model_graph, percentiles, snapshot

from esper.cli.numbers import non_negative_float, positive_float, positive_int
from esper.leyline.v1 import tamiyo_pb2
from esper.leyline.v1.control_pb2 import AckStatus, DecisionAck
from esper.leyline.version import contract_version
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient
from esper.rpc.errors import ServiceError
from esper.runtime.infra import PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "bench_tamiyo_load.json"
START_TIMEOUT_S = 120
# A decision not read within this long means the stream is gone (the replica died).
DECISION_TIMEOUT_S = 5.0
# Acked decision ids a session re-sends on open (Tolaria keeps a bounded list too).
ACKED_KEPT = 64


@dataclass
class SessionStats:
    latencies_ms: list[float] = field(default_factory=list)
    # When each decision arrived (monotonic), to tell 2 replicas from the survivor alone.
    arrived: list[float] = field(default_factory=list)
    handovers_s: list[float] = field(default_factory=list)
    opens: int = 0
    lost: str = ""


class SimulatedTraining:
    """One training run's Session, re-opened on break through the same address list."""

    def __init__(self, target: str, run_id: str, args: argparse.Namespace, graph) -> None:
        self.target, self.run_id, self.args, self.graph = target, run_id, args, graph
        self.stats = SessionStats()
        self.step = 0
        self.snapshots = 0
        self.acked: list[str] = []

    def _open(self) -> tamiyo_pb2.SessionRequest:
        return tamiyo_pb2.SessionRequest(open=tamiyo_pb2.SessionOpen(
            run_id=self.run_id, contract_version=contract_version(), client_version="bench_tamiyo_load",
            graph=self.graph, capabilities=tamiyo_pb2.Capabilities(device="cpu", max_live_seeds=1),
            acked_decision_ids=self.acked[-ACKED_KEPT:],
            last_applied_decision_id=self.acked[-1] if self.acked else ""))

    def _snapshot(self):
        self.snapshots += 1
        self.step += self.args.snapshot_every
        snap = snapshot(self.run_id, self.step)
        if self.snapshots % self.args.epoch_snapshots == 0:  # an epoch ends: its validation loss
            snap.epoch_end, snap.epoch = True, self.snapshots // self.args.epoch_snapshots
            snap.metrics.val_loss = 1.0 / (1 + snap.epoch)
        return snap

    async def run(self, until: float, start_in_s: float = 0.0) -> SessionStats:
        await asyncio.sleep(start_in_s)
        broke_at: float | None = None
        while time.monotonic() < until and not self.stats.lost:
            try:
                async with TamiyoClient(self.target, security=ChannelSecurity()) as tamiyo:
                    await self._stream(tamiyo, until, broke_at)
                return self.stats
            except (ServiceError, TimeoutError, ConnectionError) as exc:  # the replica died
                broke_at = broke_at or time.monotonic()
                if time.monotonic() - broke_at > self.args.resume_timeout_s:
                    self.stats.lost = f"no resume within {self.args.resume_timeout_s} s: {exc}"
                await asyncio.sleep(0.1)
        return self.stats

    async def _stream(self, tamiyo: TamiyoClient, until: float, broke_at: float | None) -> None:
        stream = Stream(tamiyo.session)
        try:
            stream.send(self._open())
            accept = await self._read(stream, "accept")
            self.stats.opens += 1
            if broke_at is not None:
                if not accept.accept.resumed:
                    self.stats.lost = "re-opened as a new run: its state was not shared"
                    return
                self.stats.handovers_s.append(time.monotonic() - broke_at)
            period = self.args.step_ms * self.args.snapshot_every / 1e3
            next_at = time.monotonic()
            while time.monotonic() < until:
                t0 = time.perf_counter()
                stream.send(tamiyo_pb2.SessionRequest(snapshot=self._snapshot()))
                decision = (await self._read(stream, "decision")).decision
                self.stats.latencies_ms.append((time.perf_counter() - t0) * 1e3)
                self.stats.arrived.append(time.monotonic())
                stream.send(tamiyo_pb2.SessionRequest(ack=DecisionAck(
                    decision_id=decision.decision_id, run_id=self.run_id, status=AckStatus.ACK_STATUS_APPLIED)))
                self.acked.append(decision.decision_id)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            stream.close()

    @staticmethod
    async def _read(stream: Stream, kind: str):
        while True:
            response = await asyncio.wait_for(stream.call.read(), DECISION_TIMEOUT_S)
            if response is grpc.aio.EOF:
                raise ConnectionError("the stream ended")
            got = response.WhichOneof("message")
            if got == kind:
                return response
            if got == "warning":
                raise SystemExit(f"unexpected warning: {response.warning}")


def start_tamiyo(port: int, dsn: str, log: Path) -> subprocess.Popen:
    """`esper serve tamiyo` on `port`, its output in `log` (a pipe nobody reads would fill
    and stall the server); returns once it serves."""
    env = {**os.environ, "ESPER_POSTGRES_DSN": dsn, "ESPER_PUBLISH_EVENTS": "false", "ESPER_LOG_LEVEL": "WARNING"}
    # No Urza or Tezzeret (the seeds' advances need no kernels): their addresses empty (a
    # Tamiyo trying an absent Urza at its default address stalls a decision ~0.5 s every
    # 5 s, its retries).
    argv = [sys.executable, "-m", "esper.cli.main", "serve", "tamiyo", "--port", str(port), "--metrics-port", "-1",
            "--urza-address", "", "--tezzeret-address", ""]
    with log.open("w") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "serving on" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"tamiyo on port {port} did not start (exit {process.poll()}):\n{log.read_text()}")
        time.sleep(0.2)
    return process


async def kill_later(process: subprocess.Popen, delay_s: float) -> float:
    await asyncio.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    return time.monotonic()


async def load(args, target: str, victim: subprocess.Popen) -> tuple[list[SessionStats], float, float]:
    graph = model_graph()
    began = time.monotonic()
    until = began + args.duration_s
    sessions = [SimulatedTraining(target, f"load-{i}", args, graph) for i in range(args.sessions)]
    killer = asyncio.create_task(kill_later(victim, args.duration_s * args.kill_at))
    # Training runs start one after another, not in the same millisecond: spread over the
    # ramp, each new channel finds both replicas connected and round robin spreads them.
    ramp = args.ramp_s / args.sessions
    stats = await asyncio.gather(*(s.run(until, i * ramp) for i, s in enumerate(sessions)))
    killed_at = await killer
    for s in stats:  # arrival times relative to the kill: < 0 with both replicas up
        s.arrived = [t - killed_at for t in s.arrived]
    return stats, time.monotonic() - began, killed_at - began


async def alone(args, address: str) -> list[float]:
    """One session by itself on the surviving replica: the latency baseline."""
    session = SimulatedTraining(address, "alone-0", args, model_graph())
    stats = await session.run(time.monotonic() + args.alone_s)
    return stats.latencies_ms


def summarize(args, stats: list[SessionStats], wall_s: float, killed_at_s: float, alone_ms: list[float]) -> dict:
    latencies = [ms for s in stats for ms in s.latencies_ms]
    both = [ms for s in stats for ms, t in zip(s.latencies_ms, s.arrived, strict=True) if t < 0]
    survivor = [ms for s in stats for ms, t in zip(s.latencies_ms, s.arrived, strict=True) if t >= 0]
    handovers = sorted(h for s in stats for h in s.handovers_s)
    load_p, alone_p = percentiles(latencies), percentiles(alone_ms)
    return {
        "sessions": args.sessions, "replicas": 2, "duration_s": round(wall_s, 1),
        "snapshot_period_ms": args.step_ms * args.snapshot_every,
        "replica_killed_at_s": round(killed_at_s, 1),
        "decisions": len(latencies), "decisions_per_s": round(len(latencies) / wall_s, 1),
        "latency_ms": {k: round(v, 2) for k, v in load_p.items()},
        "latency_ms_two_replicas": {k: round(v, 2) for k, v in percentiles(both).items()} if both else {},
        "latency_ms_after_kill": {k: round(v, 2) for k, v in percentiles(survivor).items()} if survivor else {},
        "sessions_lost": sum(1 for s in stats if s.lost),
        "lost_reasons": sorted({s.lost for s in stats if s.lost}),
        "sessions_moved": len(handovers),
        "handover_s": {"p50": round(handovers[len(handovers) // 2], 2), "max": round(handovers[-1], 2)}
        if handovers else {},
        "alone_latency_ms": {k: round(v, 2) for k, v in alone_p.items()},
        "p50_ratio_vs_alone": round(load_p["p50_ms"] / alone_p["p50_ms"], 2),
        "p99_ratio_vs_alone": round(load_p["p99_ms"] / alone_p["p99_ms"], 2),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=positive_int, default=50)
    parser.add_argument("--duration-s", type=positive_float, default=60.0, help="length of the loaded run")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the run when a replica is killed")
    parser.add_argument("--step-ms", type=positive_float, default=20.0, help="simulated training step time")
    parser.add_argument("--snapshot-every", type=positive_int, default=10, help="steps between snapshots (Tamiyo's default)")
    parser.add_argument("--epoch-snapshots", type=positive_int, default=10, help="snapshots per epoch")
    parser.add_argument("--ramp-s", type=non_negative_float, default=5.0, help="the sessions start spread over this long")
    parser.add_argument("--resume-timeout-s", type=positive_float, default=30.0, help="longer than this to resume: lost")
    parser.add_argument("--alone-s", type=positive_float, default=20.0, help="length of the one-session baseline")
    args = parser.parse_args()
    # (the parser's types check each count and time on its own; these relate them)
    checks = (("--kill-at", 0 < args.kill_at < 1),
              ("--ramp-s", args.ramp_s < args.duration_s * args.kill_at))
    for flag, ok in checks:
        if not ok:
            parser.error(f"{flag}: out of range")
    with tempfile.TemporaryDirectory(prefix="esper-bench-load-") as state:
        os.chmod(state, 0o755)  # PostgreSQL runs as `nobody` under root and must reach it
        postgres = PostgresServer(Path(state), free_port(), die_with_parent=True)
        dsn = postgres.start()
        ports = [free_port(), free_port()]
        replicas = [start_tamiyo(port, dsn, Path(state) / f"tamiyo-{port}.log") for port in ports]
        try:
            target = ",".join(f"127.0.0.1:{p}" for p in ports)
            stats, wall_s, killed_at_s = asyncio.run(load(args, target, replicas[0]))
            alone_ms = asyncio.run(alone(args, f"127.0.0.1:{ports[1]}"))
        finally:
            for process in replicas:
                if process.poll() is None:
                    process.terminate()
                process.wait(timeout=30)
            postgres.stop()
    result = summarize(args, stats, wall_s, killed_at_s, alone_ms)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if result["sessions_lost"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
