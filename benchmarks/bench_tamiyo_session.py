"""Decision round trip over loopback: Tolaria-side snapshot -> Tamiyo decision -> back.

Starts, each as a separate process: a bare grpc.aio bidi echo server (no interceptors,
2 KB messages: the floor any stream pays on this machine), `esper serve tamiyo` with the
learned policy's batching on (its defaults) and `esper serve tamiyo` with it off
(`--gnn-batch-window-ms 0`), both without Urza or Tezzeret (unreachable dependencies would
add their retries to what is measured). Measures, interleaved in rounds so machine noise
hits every path alike, the time from sending a snapshot to receiving its decision
(p50/p99) for the heuristic and the learned policy (an untrained net, 100-node graph), with
1 and N concurrent sessions, and decisions per second. Every claim is a ratio against a
baseline of the same run:

- heuristic one-session p50 <= 2x the bare echo's p50;
- N sessions >= 1.5x the decisions/s of one session (heuristic and gnn);
- gnn one-session p99 <= 5 ms at 100 nodes; gnn N-session p50 <= 3x its one-session p50.

Prints and writes JSON to benchmarks/results/bench_tamiyo_session.json.

    .venv/bin/python benchmarks/bench_tamiyo_session.py [--rounds 300] [--sessions 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tamiyo_workload import NODES, Stream, free_port, model_graph, percentiles, snapshot

from esper.leyline.v1 import tamiyo_pb2
from esper.leyline.v1.control_pb2 import AckStatus, DecisionAck
from esper.leyline.v1.signals_pb2 import ModelGraph
from esper.leyline.version import contract_version
from esper.rpc.channels import ChannelSecurity, open_channel
from esper.rpc.clients import TamiyoClient

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
def started(argv: list[str]) -> Iterator[None]:
    """Run `argv` until the block ends; returns once it printed 'serving on'."""
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while "serving on" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                raise SystemExit(f"{argv[:4]} exited with {server.returncode}")
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


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


class Samples:
    """Latencies and decisions per second of one path, pooled over the interleaved repeats;
    the time counted is from the first snapshot sent to the last decision received (opening
    and closing the streams excluded)."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.decisions = 0
        self.wall_s = 0.0

    async def run(self, sessions: list) -> None:
        results = await asyncio.gather(*sessions)
        self.wall_s += max(end for _, _, end in results) - min(start for _, start, _ in results)
        for times, _, _ in results:
            self.ms += times
            self.decisions += len(times)

    def summary(self) -> dict[str, float]:
        return {**percentiles(self.ms), "per_s": self.decisions / self.wall_s}


async def measure(args, echo_address: str, batched: str, unbatched: str | None) -> dict:
    graph = model_graph()
    per_repeat = max(10, args.rounds // args.repeats)
    n = args.sessions
    security = ChannelSecurity()
    paths: dict[str, Samples] = {}
    echo_channel = open_channel(echo_address, security=security)
    clients = {"": TamiyoClient(batched, security=security)}
    if unbatched:
        clients["unbatched_"] = TamiyoClient(unbatched, security=security)
    for client in clients.values():
        await client.__aenter__()
    try:
        await echo_session(echo_channel, 50)  # warm-up: connections, torch, caches
        for prefix, client in clients.items():
            for policy in ("heuristic", "gnn"):
                await tamiyo_session(client, f"warm-{prefix}{policy}", policy, 20, graph)
        base = Samples()
        for repeat in range(args.repeats):  # interleaved: every path sees the same noise
            await base.run([_unary(clients[""], per_repeat)])
            await paths.setdefault("echo", Samples()).run([echo_session(echo_channel, per_repeat)])
            for prefix, client in clients.items():
                for policy in ("heuristic", "gnn"):
                    name = f"{prefix}{policy}"
                    await paths.setdefault(f"{name}_one", Samples()).run(
                        [tamiyo_session(client, f"{name}-{repeat}", policy, per_repeat, graph)])
                    await paths.setdefault(f"{name}_many", Samples()).run(
                        [tamiyo_session(client, f"{name}-{repeat}-{i}", policy, max(5, per_repeat // 2), graph)
                         for i in range(n)])
            await paths["echo"].run([echo_session(echo_channel, per_repeat)])
    finally:
        await echo_channel.close()
        for client in clients.values():
            await client.__aexit__(None, None, None)
    return report(paths, base, n, unbatched is not None)


async def _unary(tamiyo: TamiyoClient, rounds: int) -> Timed:
    times = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        await tamiyo.list_policies()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, start, time.perf_counter()


def report(paths: dict[str, Samples], base: Samples, n: int, with_unbatched: bool) -> dict:
    s = {name: samples.summary() for name, samples in paths.items()}
    echo = s["echo"]
    results: dict = {"bare_bidi_echo": echo, "unary_list_policies": base.summary()}
    for prefix in ("", "unbatched_") if with_unbatched else ("",):
        for policy in ("heuristic", "gnn"):
            one, many = s[f"{prefix}{policy}_one"], s[f"{prefix}{policy}_many"]
            results[f"{prefix}{policy}"] = {
                "one_session": one, f"{n}_sessions": many,
                "p50_vs_echo": one["p50_ms"] / echo["p50_ms"],
                "p99_vs_echo": one["p99_ms"] / echo["p99_ms"],
                "sessions_p50_vs_one": many["p50_ms"] / one["p50_ms"],
                "sessions_decisions_per_s_vs_one": many["per_s"] / one["per_s"],
            }
    h, g = results["heuristic"], results["gnn"]
    met = {
        "heuristic_p50_vs_echo": h["p50_vs_echo"] <= TARGETS["heuristic_p50_vs_echo_max"],
        "heuristic_sessions_decisions_per_s": (h["sessions_decisions_per_s_vs_one"]
                                               >= TARGETS["sessions_decisions_per_s_vs_one_min"]),
        "gnn_sessions_decisions_per_s": (g["sessions_decisions_per_s_vs_one"]
                                         >= TARGETS["sessions_decisions_per_s_vs_one_min"]),
        "gnn_one_session_p99": g["one_session"]["p99_ms"] <= TARGETS["gnn_one_session_p99_ms_max"],
        "gnn_sessions_p50_vs_one": g["sessions_p50_vs_one"] <= TARGETS["gnn_sessions_p50_vs_one_max"],
    }
    return {"results": results, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="one-session round trips per path, over all repeats")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of every path")
    parser.add_argument("--no-unbatched", action="store_true", help="skip the server with GNN batching off")
    parser.add_argument("--tamiyo-args", default="", help="more flags for both Tamiyo servers, e.g. '--gnn-workers 2'")
    parser.add_argument("--out", default="benchmarks/results/bench_tamiyo_session.json")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(serve_echo(args.echo_server))
        return
    from esper.tamiyo.policies.artifact import save_policy
    from esper.tamiyo.policies.gnn import GnnPolicy

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        artifact = Path(tmp) / "gnn.safetensors"
        untrained = GnnPolicy()
        save_policy(artifact, untrained.net, untrained.vocabulary, "gnn@bench")
        ports = {"echo": free_port(), "batched": free_port(), "unbatched": free_port()}
        servers.enter_context(started([sys.executable, __file__, "--echo-server", str(ports["echo"])]))
        for name in ("batched",) if args.no_unbatched else ("batched", "unbatched"):
            extra = ["--gnn-batch-window-ms", "0"] if name == "unbatched" else []
            servers.enter_context(started([
                sys.executable, "-m", "esper.cli.main", "serve", "tamiyo", "--port", str(ports[name]),
                "--metrics-port", "-1", "--gnn-artifact", str(artifact), "--state-dir", f"{tmp}/{name}",
                "--urza-address", "", "--tezzeret-address", "",
                "--log-level", "WARNING", *args.tamiyo_args.split(), *extra]))
        address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        measured = asyncio.run(measure(args, address["echo"], address["batched"],
                                       None if args.no_unbatched else address["unbatched"]))
    out = {"benchmark": "tamiyo_session_round_trip", "graph_nodes": NODES, "echo_bytes": ECHO_BYTES,
           "tamiyo_args": args.tamiyo_args,
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
