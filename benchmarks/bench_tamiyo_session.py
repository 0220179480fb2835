"""Decision round trip over loopback: Tolaria-side snapshot -> Tamiyo decision -> back.

Starts `esper serve tamiyo` as a separate process (heuristic, and the learned policy from a
freshly saved artifact), opens Session streams and measures, per policy, the time from
sending a snapshot to receiving its decision (p50/p99), with 1 and many concurrent
sessions. Baseline in the same run: a unary ListPolicies round trip (pure transport).
Targets from issue 5: heuristic p50 <= 1 ms, p99 <= 5 ms. Prints and writes JSON to
benchmarks/results/bench_tamiyo_session.json.

    .venv/bin/python benchmarks/bench_tamiyo_session.py [--rounds 300] [--sessions 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from esper.leyline.v1 import tamiyo_pb2
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.control_pb2 import AckStatus, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import (
    GraphEdge,
    GraphNode,
    ModelGraph,
    SlotInfo,
    TrainingMetrics,
    TrainingSnapshot,
)
from esper.leyline.version import contract_version
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TamiyoClient

NODES = 100
SLOT_EVERY = 4
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_graph() -> ModelGraph:
    g = ModelGraph()
    for i in range(NODES):
        slot = f"s{i}" if i % SLOT_EVERY == 0 else ""
        g.nodes.append(GraphNode(node_id=f"n{i}", op_type="Linear", in_dim=64, out_dim=64, params=4160,
                                 slot_id=slot, depth=i))
        if i:
            g.edges.append(GraphEdge(source=f"n{i - 1}", target=f"n{i}"))
        if slot:
            g.slots.append(SlotInfo(slot_id=slot, node_id=f"n{i}",
                                    shape=SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=64)))
    return g


def snapshot(run_id: str, step: int) -> TrainingSnapshot:
    # A germinated seed: the heuristic advances it every time (one decision per snapshot).
    seed = SeedState(seed_id="seed-0", slot_id="s0", stage=SeedStage.SEED_STAGE_GERMINATED)
    return TrainingSnapshot(run_id=run_id, step=step, epoch=0, sequence=step, seeds=[seed],
                            metrics=TrainingMetrics(train_loss=0.5, val_loss=0.6))


def percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "samples": len(ms)}


async def one_session(tamiyo: TamiyoClient, run_id: str, policy: str, rounds: int,
                      graph: ModelGraph) -> list[float]:
    queue: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (item := await queue.get()) is not None:
            yield item
    call = tamiyo.session(requests())
    await queue.put(tamiyo_pb2.SessionRequest(open=tamiyo_pb2.SessionOpen(
        run_id=run_id, contract_version=contract_version(), graph=graph, policy=policy,
        capabilities=tamiyo_pb2.Capabilities(device="cpu", max_live_seeds=1))))
    await call.read()  # accept
    times = []
    for step in range(1, rounds + 1):
        t0 = time.perf_counter()
        await queue.put(tamiyo_pb2.SessionRequest(snapshot=snapshot(run_id, step)))
        while True:
            response = await call.read()
            if response.WhichOneof("message") == "decision":
                break
        times.append((time.perf_counter() - t0) * 1e3)
        await queue.put(tamiyo_pb2.SessionRequest(ack=DecisionAck(
            decision_id=response.decision.decision_id, run_id=run_id, status=AckStatus.ACK_STATUS_APPLIED)))
    await queue.put(None)
    call.cancel()
    return times


async def measure(address: str, rounds: int, sessions: int) -> dict:
    graph = model_graph()
    results: dict = {}
    async with TamiyoClient(address, security=ChannelSecurity()) as tamiyo:
        base = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await tamiyo.list_policies()
            base.append((time.perf_counter() - t0) * 1e3)
        results["baseline_unary_list_policies"] = percentiles(base)
        for policy in ("heuristic", "gnn"):
            await one_session(tamiyo, f"warm-{policy}", policy, 20, graph)
            single = await one_session(tamiyo, f"bench-{policy}", policy, rounds, graph)
            many = await asyncio.gather(*(one_session(tamiyo, f"bench-{policy}-{i}", policy, max(10, rounds // sessions),
                                                      graph) for i in range(sessions)))
            results[policy] = {
                "one_session": percentiles(single),
                f"{sessions}_concurrent_sessions": percentiles([t for ts in many for t in ts]),
                "p50_ratio_vs_baseline": statistics.median(single) / results["baseline_unary_list_policies"]["p50_ms"],
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/bench_tamiyo_session.json")
    args = parser.parse_args()
    from esper.tamiyo.policies.artifact import save_policy
    from esper.tamiyo.policies.gnn import GnnPolicy

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "gnn.safetensors"
        untrained = GnnPolicy()
        save_policy(artifact, untrained.net, untrained.vocabulary, "gnn@bench")
        port = free_port()
        env = {**os.environ, "ESPER_URZA_ADDRESS": ""}
        server = subprocess.Popen(
            [sys.executable, "-m", "esper.cli.main", "serve", "tamiyo", "--port", str(port), "--metrics-port", "-1",
             "--gnn-artifact", str(artifact), "--state-dir", tmp, "--log-level", "WARNING"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout is not None
            deadline = time.monotonic() + START_TIMEOUT_S
            line = ""
            while "serving on" not in line and time.monotonic() < deadline:
                line = server.stdout.readline()
                if not line and server.poll() is not None:
                    raise SystemExit(f"tamiyo exited with {server.returncode}")
            results = asyncio.run(measure(f"127.0.0.1:{port}", args.rounds, args.sessions))
        finally:
            server.terminate()
            server.wait(timeout=30)
    h = results["heuristic"]["one_session"]
    report = {"benchmark": "tamiyo_session_round_trip", "graph_nodes": NODES, "rounds": args.rounds,
              "sessions": args.sessions, "targets": {"heuristic_p50_ms": 1.0, "heuristic_p99_ms": 5.0},
              "meets_targets": h["p50_ms"] <= 1.0 and h["p99_ms"] <= 5.0, "results": results}
    for name, row in results.items():
        print(name, json.dumps(row))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"meets_targets": report["meets_targets"], "written": str(out)}))


if __name__ == "__main__":
    main()
