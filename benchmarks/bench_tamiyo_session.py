"""Decision round trip over loopback: Tolaria-side snapshot -> Tamiyo decision -> back.

Starts, each as a separate process: a bare grpc.aio bidi echo server (no interceptors,
2 KB messages: the floor any stream pays on this machine), `esper serve tamiyo` with the
learned policy's batching on (its defaults), `esper serve tamiyo` with it off
(`--gnn-batch-window-ms 0`), and, keeping runs in a PostgreSQL this script starts, `esper
serve tamiyo --processes P` (P processes on one port; P defaults to the cores) and one
process on the same database as its baseline; all without Urza or Tezzeret (unreachable
dependencies would add their retries to what is measured; decisions are still published,
to a broker that is not there). Measures, interleaved in rounds so machine noise hits
every path alike, the time from sending a snapshot to receiving its decision (p50/p99) for
the heuristic and the learned policy (an untrained net, 100-node graph), with 1 and N
concurrent sessions, and decisions per second. Each session has its own connection, as
training runs in their own processes have (gRPC lets one process's channels to an address
share one connection, which would put every session on one server process). Every claim
is a ratio against a baseline of the same run:

- heuristic one-session p50 <= 2x the bare echo's p50 (one process);
- N sessions >= 1.5x the decisions/s of one session (heuristic and gnn): the most any
  server of the run gave N sessions, against the fastest one session of the run; the
  P processes' gain is their N sessions' decisions/s over one process's on the same
  database;
- gnn one-session p99 <= 5 ms at 100 nodes; gnn N-session p50 <= 3x its one-session p50
  (one process).

What the last one could reach at best is measured too, as ratios to the GNN's one-session
p50 (`gnn_sessions_p50_floors_vs_one`): N bare echo streams at once, each on its own
connection (gRPC alone); N heuristic sessions (the same server, transport and session work,
with a decision that costs next to nothing); and the cycle of a session when every core is
busy with the CPU one GNN decision costs the server and this client (`cpu_ms_per_decision`
of each path, read from /proc). With `--profile S`, py-spy then samples the batched server
and this client for S seconds under N GNN sessions: the busiest functions, by share of the
samples that were not waiting.

Prints and writes JSON to benchmarks/results/bench_tamiyo_session.json.

    .venv/bin/python benchmarks/bench_tamiyo_session.py [--rounds 300] [--sessions 16] [--repeats 5] [--processes P] [--profile S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tamiyo_workload import NODES, Stream, free_port, model_graph, percentiles, snapshot

from esper.cli.numbers import non_negative_int, positive_int
from esper.leyline.v1 import tamiyo_pb2
from esper.leyline.v1.control_pb2 import AckStatus, DecisionAck
from esper.leyline.v1.signals_pb2 import ModelGraph
from esper.leyline.version import contract_version
from esper.rpc.channels import ChannelSecurity, open_channel
from esper.rpc.clients import TamiyoClient
from esper.runtime.infra import PostgresServer

START_TIMEOUT_S = 120
ECHO_BYTES = 2048  # about a snapshot with per-layer health: the bare-stream size
ECHO_METHOD = "/bench.Echo/Session"
TARGETS = {
    "heuristic_p50_vs_echo_max": 2.0,
    "sessions_decisions_per_s_vs_one_min": 1.5,
    "gnn_one_session_p99_ms_max": 5.0,
    "gnn_sessions_p50_vs_one_max": 3.0,
}


# -- the bare echo server (its own process) ---------------------------------------------------


async def serve_echo(port: int) -> None:
    """grpc.aio with nothing added: one bidi method echoing raw bytes (no (de)serializer)."""
    import grpc

    async def echo(requests, context):
        async for message in requests:
            yield message

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Echo", {"Session": grpc.stream_stream_rpc_method_handler(echo)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


@contextlib.contextmanager
def started(argv: list[str]) -> Iterator[subprocess.Popen]:
    """Run `argv` until the block ends; returns (the process) once it printed 'serving on'."""
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while "serving on" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                raise SystemExit(f"{argv[:4]} exited with {server.returncode}")
        yield server
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass(frozen=True)
class Server:
    """A server this script started: where it listens, its process, and the process whose
    CPU is its work (None for the multi-process server, whose workers are its children)."""

    address: str
    pid: int
    cpu_pid: int | None


# -- clients: the same shape for the echo and for Tamiyo -------------------------------------


Timed = tuple[list[float], float, float]  # round trips (ms), first send, last answer (s)


async def echo_session(channel, rounds: int) -> Timed:
    stream = Stream(channel.stream_stream(ECHO_METHOD))
    payload = os.urandom(ECHO_BYTES)
    times = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        stream.send(payload)
        await stream.call.read()
        times.append((time.perf_counter() - t0) * 1e3)
    end = time.perf_counter()
    stream.close()
    return times, start, end


async def tamiyo_session(tamiyo: TamiyoClient, run_id: str, policy: str, rounds: int,
                         graph: ModelGraph) -> Timed:
    stream = Stream(tamiyo.session)
    stream.send(tamiyo_pb2.SessionRequest(open=tamiyo_pb2.SessionOpen(
        run_id=run_id, contract_version=contract_version(), graph=graph, policy=policy,
        capabilities=tamiyo_pb2.Capabilities(device="cpu", max_live_seeds=1))))
    await stream.call.read()  # accept
    times = []
    start = time.perf_counter()
    for step in range(1, rounds + 1):
        t0 = time.perf_counter()
        stream.send(tamiyo_pb2.SessionRequest(snapshot=snapshot(run_id, step)))
        while True:
            response = await stream.call.read()
            if response.WhichOneof("message") == "decision":
                break
        times.append((time.perf_counter() - t0) * 1e3)
        end = time.perf_counter()
        stream.send(tamiyo_pb2.SessionRequest(ack=DecisionAck(
            decision_id=response.decision.decision_id, run_id=run_id, status=AckStatus.ACK_STATUS_APPLIED)))
    stream.close()
    return times, start, end


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process `pid` (this one when None) so far, from /proc
    (10 ms ticks: read over thousands of decisions)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Samples:
    """Latencies and decisions per second of one path, pooled over the interleaved repeats;
    the time counted is from the first snapshot sent to the last decision received (opening
    and closing the streams excluded). With the server's `pid`, also the CPU each decision
    (or echo) costs the server and this client, over the whole of each run."""

    def __init__(self, pid: int | None = None) -> None:
        self.ms: list[float] = []
        self.decisions = 0
        self.wall_s = 0.0
        self.pid = pid
        self.cpu_s = {"server": 0.0, "client": 0.0}

    async def run(self, sessions: list) -> None:
        before = self._cpu()
        results = await asyncio.gather(*sessions)
        for side, (start, end) in zip(self.cpu_s, zip(before, self._cpu())):
            self.cpu_s[side] += end - start
        self.wall_s += max(end for _, _, end in results) - min(start for _, start, _ in results)
        for times, _, _ in results:
            self.ms += times
            self.decisions += len(times)

    def _cpu(self) -> tuple[float, float]:
        return (cpu_seconds(self.pid) if self.pid else 0.0), cpu_seconds()

    def summary(self) -> dict[str, float]:
        out = {**percentiles(self.ms), "per_s": self.decisions / self.wall_s}
        if self.pid:
            out["cpu_ms_per_decision"] = {side: 1e3 * s / self.decisions for side, s in self.cpu_s.items()}
        return out


async def measure(args, echo: Server, servers: dict[str, Server]) -> dict:
    """`servers`: the Tamiyo servers by path prefix ("" batched, "unbatched_", "store_"
    and "processes_": one and P processes keeping runs in PostgreSQL)."""
    graph = model_graph()
    per_repeat = max(10, args.rounds // args.repeats)
    n = args.sessions
    security = ChannelSecurity()
    paths: dict[str, Samples] = {}
    echo_channel = open_channel(echo.address, security=security)
    # The floor of N concurrent streams: N echo sessions, each on its own connection.
    echo_channels = [open_channel(echo.address, security=security, own_connection=True) for _ in range(n)]
    # A connection per session, kept over the repeats (warm, as a running session's is).
    clients = {prefix: [TamiyoClient(server.address, security=security, own_connection=True) for _ in range(n)]
               for prefix, server in servers.items()}
    try:
        await echo_session(echo_channel, 50)  # warm-up: connections, torch, caches
        await asyncio.gather(*(echo_session(channel, 20) for channel in echo_channels))
        for prefix, sessions in clients.items():
            for policy in ("heuristic", "gnn"):
                await asyncio.gather(*(tamiyo_session(client, f"warm-{prefix}{policy}-{i}", policy, 20, graph)
                                       for i, client in enumerate(sessions)))
        base = Samples()
        for repeat in range(args.repeats):  # interleaved: every path sees the same noise
            await base.run([_unary(clients[""][0], per_repeat)])
            await paths.setdefault("echo", Samples(echo.pid)).run([echo_session(echo_channel, per_repeat)])
            await paths.setdefault("echo_many", Samples(echo.pid)).run(
                [echo_session(channel, max(5, per_repeat // 2)) for channel in echo_channels])
            for prefix, sessions in clients.items():
                pid = servers[prefix].cpu_pid
                for policy in ("heuristic", "gnn"):
                    name = f"{prefix}{policy}"
                    await paths.setdefault(f"{name}_one", Samples(pid)).run(
                        [tamiyo_session(sessions[0], f"{name}-{repeat}", policy, per_repeat, graph)])
                    await paths.setdefault(f"{name}_many", Samples(pid)).run(
                        [tamiyo_session(client, f"{name}-{repeat}-{i}", policy, max(5, per_repeat // 2), graph)
                         for i, client in enumerate(sessions)])
            await paths["echo"].run([echo_session(echo_channel, per_repeat)])
        if args.profile:
            profiles = await profile_server(args, servers[""], clients[""], graph)
    finally:
        await echo_channel.close()
        for channel in echo_channels:
            await channel.close()
        for sessions in clients.values():
            for client in sessions:
                await client.close()
    measured = report(paths, base, n, list(servers))
    if args.profile:
        measured["profile"] = profiles
    return measured


def floors(echo_many: dict, heuristic_many: dict, gnn: dict, n: int) -> dict:
    """What the GNN's N-session p50 could be at best, over its one-session p50, on this
    machine: with N bare echo streams (gRPC alone, no Tamiyo); with Tamiyo's heuristic, whose
    decision costs next to nothing (the same server, transport and session work); and the
    mean cycle of a session when every core is busy with the CPU one GNN decision costs the
    server and the client (Little's law: N decisions in flight, cores / CPU-per-decision
    decisions per second)."""
    one = gnn["one_session"]["p50_ms"]
    cpu = gnn[f"{n}_sessions"].get("cpu_ms_per_decision", {})
    out = {"bare_echo": echo_many["p50_ms"] / one, "heuristic": heuristic_many["p50_ms"] / one}
    if cpu:
        out["cpu_bound_cycle"] = n * sum(cpu.values()) / (os.cpu_count() or 1) / one
    return out


async def profile_server(args, server: Server, sessions: list[TamiyoClient], graph: ModelGraph) -> dict:
    """py-spy's samples of the batched server and of this client while N GNN sessions run
    for --profile seconds: the functions with the largest shares of busy samples (self:
    the function itself is running; total: it is on the stack)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy, in the dev extra)")
    with tempfile.TemporaryDirectory() as tmp:
        spies = {side: subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(args.profile), "--rate", "250",
             "--format", "raw", "--nonblocking", "--output", f"{tmp}/{side}.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for side, pid in (("server", server.pid), ("client", os.getpid()))}
        rounds = 0
        while any(p.poll() is None for p in spies.values()):  # busy until both have sampled
            await asyncio.gather(*(tamiyo_session(client, f"profile-{rounds}-{i}", "gnn", 20, graph)
                                   for i, client in enumerate(sessions)))
            rounds += 1
        return {side: top_functions(Path(f"{tmp}/{side}.txt")) for side in spies}


# Leaves of samples of a thread that waits (for the network, a queue or a lock) rather than
# works: py-spy cannot always tell them from running code.
IDLE_LEAVES = ("EpollSelector.select (", "_worker (thread.py)", "Thread.run (threading.py)",
               "Condition.wait (", "Event.wait (")
def top_functions(raw: Path, top: int = 15) -> dict:
    """The busiest functions of a py-spy raw (collapsed stacks) profile, as shares of the
    busy samples (those not waiting, see IDLE_LEAVES): where each sample was (self), and
    what was on its stack (total). In `total`, of functions on exactly the same stacks (a
    thread's bootstrap, the event loop's run_forever, ..., down to the first frame that
    branches) only the deepest is listed: the others say nothing more."""
    own: dict[str, int] = {}
    lines: dict[str, set[int]] = {}  # function -> the busy stacks (lines) it is on
    depth: dict[str, int] = {}
    counts: list[int] = []
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        if frames[-1].startswith(IDLE_LEAVES):
            idle += int(count)
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for level, frame in enumerate(frames):
            lines.setdefault(frame, set()).add(len(counts))
            depth[frame] = max(depth.get(frame, 0), level)
        counts.append(int(count))
    busy = sum(counts)
    deepest: dict[frozenset[int], str] = {}
    for frame, on in lines.items():
        key = frozenset(on)
        if key not in deepest or depth[frame] > depth[deepest[key]]:
            deepest[key] = frame
    total = {frame: sum(counts[i] for i in on) for on, frame in deepest.items()}

    def shares(by_function: dict[str, int]) -> dict[str, float]:
        ranked = sorted(by_function.items(), key=lambda kv: -kv[1])[:top]
        return {name: round(c / max(busy, 1), 4) for name, c in ranked}

    return {"busy_samples": busy, "idle_samples": idle, "self": shares(own), "total": shares(total)}


def _frame(frame: str) -> str:
    """`fn (path/to/module.py:123)` as `fn (module.py)`: one entry per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')')).name.split(':')[0]})" if where else name


async def _unary(tamiyo: TamiyoClient, rounds: int) -> Timed:
    times = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        await tamiyo.list_policies()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, start, time.perf_counter()


def report(paths: dict[str, Samples], base: Samples, n: int, prefixes: list[str]) -> dict:
    s = {name: samples.summary() for name, samples in paths.items()}
    echo, echo_many = s["echo"], s["echo_many"]
    results: dict = {"bare_bidi_echo": echo, "unary_list_policies": base.summary(),
                     f"bare_bidi_echo_{n}_sessions": {
                         **echo_many, "sessions_p50_vs_one": echo_many["p50_ms"] / echo["p50_ms"]}}
    for prefix in prefixes:
        for policy in ("heuristic", "gnn"):
            one, many = s[f"{prefix}{policy}_one"], s[f"{prefix}{policy}_many"]
            results[f"{prefix}{policy}"] = {
                "one_session": one, f"{n}_sessions": many,
                "p50_vs_echo": one["p50_ms"] / echo["p50_ms"],
                "p99_vs_echo": one["p99_ms"] / echo["p99_ms"],
                "sessions_p50_vs_one": many["p50_ms"] / one["p50_ms"],
                "sessions_decisions_per_s_vs_one": many["per_s"] / one["per_s"],
            }
    for policy in ("heuristic", "gnn"):
        runs = [results[f"{prefix}{policy}"] for prefix in prefixes]
        results[f"{policy}_sessions_decisions_per_s_vs_best_one"] = (  # the best N sessions over the best one
            max(r[f"{n}_sessions"]["per_s"] for r in runs) / max(r["one_session"]["per_s"] for r in runs))
        if "processes_" in prefixes:
            results[f"{policy}_processes_sessions_decisions_per_s_vs_one_process"] = (
                results[f"processes_{policy}"][f"{n}_sessions"]["per_s"]
                / results[f"store_{policy}"][f"{n}_sessions"]["per_s"])
    h, g = results["heuristic"], results["gnn"]
    results["gnn_sessions_p50_floors_vs_one"] = floors(echo_many, h[f"{n}_sessions"], g, n)
    met = {
        "heuristic_p50_vs_echo": h["p50_vs_echo"] <= TARGETS["heuristic_p50_vs_echo_max"],
        "heuristic_sessions_decisions_per_s": (results["heuristic_sessions_decisions_per_s_vs_best_one"]
                                               >= TARGETS["sessions_decisions_per_s_vs_one_min"]),
        "gnn_sessions_decisions_per_s": (results["gnn_sessions_decisions_per_s_vs_best_one"]
                                         >= TARGETS["sessions_decisions_per_s_vs_one_min"]),
        "gnn_one_session_p99": g["one_session"]["p99_ms"] <= TARGETS["gnn_one_session_p99_ms_max"],
        "gnn_sessions_p50_vs_one": g["sessions_p50_vs_one"] <= TARGETS["gnn_sessions_p50_vs_one_max"],
    }
    return {"results": results, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=300, help="one-session round trips per path, over all repeats")
    parser.add_argument("--sessions", type=positive_int, default=16)
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved rounds of every path")
    parser.add_argument("--no-unbatched", action="store_true", help="skip the server with GNN batching off")
    parser.add_argument("--processes", type=positive_int, default=os.cpu_count() or 1,
                        help="processes of the multi-process server (default: the cores; 1 skips it)")
    parser.add_argument("--tamiyo-args", default="", help="more flags for both Tamiyo servers, e.g. '--gnn-workers 2'")
    parser.add_argument("--profile", type=non_negative_int, default=0, metavar="SECONDS",
                        help="after the measurement, sample the batched server and this client with "
                             "py-spy for this long under N GNN sessions (0: off)")
    parser.add_argument("--out", default="benchmarks/results/bench_tamiyo_session.json")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.processes <= 64:
        parser.error("--processes: must be within [1, 64]")
    if not 0 <= args.profile <= 600:
        parser.error("--profile: must be within [0, 600] seconds")
    if args.echo_server:
        asyncio.run(serve_echo(args.echo_server))
        return
    from esper.tamiyo.policies.artifact import save_policy
    from esper.tamiyo.policies.gnn import GnnPolicy

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        os.chmod(tmp, 0o755)  # PostgreSQL runs as `nobody` under root and must reach it
        artifact = Path(tmp) / "gnn.safetensors"
        untrained = GnnPolicy()
        save_policy(artifact, untrained.net, untrained.vocabulary, "gnn@bench")
        extras = {"": [], "unbatched_": ["--gnn-batch-window-ms", "0"]}
        if args.no_unbatched:
            del extras["unbatched_"]
        if args.processes > 1:
            postgres = PostgresServer(Path(tmp), free_port(), die_with_parent=True)
            servers.callback(postgres.stop)
            dsn = postgres.start()
            extras["store_"] = ["--postgres-dsn", dsn]
            extras["processes_"] = ["--processes", str(args.processes), "--postgres-dsn", dsn]
        echo_port = free_port()
        process = servers.enter_context(started([sys.executable, __file__, "--echo-server", str(echo_port)]))
        echo = Server(f"127.0.0.1:{echo_port}", process.pid, process.pid)
        tamiyos = {}
        for prefix, extra in extras.items():
            port = free_port()
            process = servers.enter_context(started([
                sys.executable, "-m", "esper.cli.main", "serve", "tamiyo", "--port", str(port),
                "--metrics-port", "-1", "--gnn-artifact", str(artifact), "--state-dir", f"{tmp}/tamiyo{prefix}",
                "--urza-address", "", "--tezzeret-address", "",
                "--log-level", "WARNING", *args.tamiyo_args.split(), *extra]))
            tamiyos[prefix] = Server(f"127.0.0.1:{port}", process.pid,
                                     None if prefix == "processes_" else process.pid)
        measured = asyncio.run(measure(args, echo, tamiyos))
    out = {"benchmark": "tamiyo_session_round_trip", "graph_nodes": NODES, "echo_bytes": ECHO_BYTES,
           "tamiyo_args": args.tamiyo_args, "processes": args.processes,
           "rounds": args.rounds, "repeats": args.repeats, "sessions": args.sessions, "cpus": os.cpu_count(),
           "load_avg_1m": os.getloadavg()[0], "targets": TARGETS, **measured,
           "meets_targets": all(measured["met"].values())}
    for name, row in measured["results"].items():
        print(name, json.dumps(row))
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"met": measured["met"], "written": str(path)}))


if __name__ == "__main__":
    main()
