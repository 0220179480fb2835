"""Tezzeret benchmark: compile+validate latency per blueprint family, and compile
throughput (jobs/minute) with one worker vs two workers in one consumer group.

Part 1 runs the pipeline alone (build, validate, torch.export trial, characterise) for every
built-in blueprint at a small slot and reports the median per blueprint and per family.
Part 2 starts the real stack on loopback (PostgreSQL, the tansu broker, the localbucket
object store, Urza and Tezzeret in-process), queues one job per built-in blueprint and
times until all are registered, with one worker and with two workers of one group, in the
order 1, 2, 2, 1 (each run with its own job database, so the jobs are new); the ratio of
the mean two-worker rate to the mean one-worker rate is the claim. All workers run in
this one process.

    .venv/bin/python benchmarks/bench_tezzeret.py [--repeats 3] [--channels 64] [--quick]

Writes benchmarks/results/bench_tezzeret.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from esper.blueprints import builtin_blueprints
from esper.cli.numbers import positive_int
from esper.leyline.v1 import (
    blueprint_pb2,
    common_pb2,
    kernel_pb2,
    telemetry_pb2,
)
from esper.rpc.channels import ChannelSecurity
from esper.rpc.clients import TezzeretClient
from esper.runtime.infra import Broker, ObjectStore, PostgresServer, free_port
from esper.runtime.server import start_server
from esper.tezzeret import service as tezzeret_service
from esper.tezzeret.config import TezzeretConfig
from esper.tezzeret.deps import connect
from esper.tezzeret.pipeline import PipelineSettings, build_kernel
from esper.urza import service as urza_service

RESULTS = Path(__file__).with_name("results") / "bench_tezzeret.json"
# Timed forwards per kernel in the characterisation step (the server's default is 50).
LATENCY_SAMPLES = 20
# Sequence length / spatial size of the benchmark slots: small, as seeds see in tests.
LENGTH = 16
SPATIAL = 8
TERMINAL = (telemetry_pb2.COMPILE_STAGE_REGISTERED, telemetry_pb2.COMPILE_STAGE_FAILED,
            telemetry_pb2.COMPILE_STAGE_CANCELLED)


def target_for(spec: blueprint_pb2.BlueprintSpec, channels: int) -> kernel_pb2.KernelTarget:
    kind = spec.slot_kinds[0]
    shape = common_pb2.SlotShape(kind=kind, channels=channels)
    if kind in (common_pb2.SLOT_KIND_SEQUENCE, common_pb2.SLOT_KIND_CONV1D):
        shape.length = LENGTH
    elif kind == common_pb2.SLOT_KIND_CONV2D:
        shape.height = shape.width = SPATIAL
    return kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT32, shape=shape)


async def _quiet(stage: str, detail: str) -> None:
    return None


async def pipeline_latency(channels: int, repeats: int) -> dict:
    settings = PipelineSettings(latency_samples=LATENCY_SAMPLES, warmup_runs=3, try_export=True)
    per_blueprint, per_family = {}, defaultdict(list)
    for spec in builtin_blueprints():
        target = target_for(spec, channels)
        await build_kernel(spec, target, settings, _quiet)  # warm torch's caches once
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            await build_kernel(spec, target, settings, _quiet)
            times.append((time.perf_counter() - start) * 1000)
        family = blueprint_pb2.BlueprintFamily.Name(spec.family).removeprefix("BLUEPRINT_FAMILY_")
        per_blueprint[spec.name] = {"family": family, "median_ms": statistics.median(times)}
        per_family[family].append(statistics.median(times))
        print(f"  {spec.name:20s} {family:11s} {statistics.median(times):8.1f} ms")
    families = {f: {"median_ms": statistics.median(v), "blueprints": len(v)} for f, v in per_family.items()}
    return {"per_blueprint": per_blueprint, "per_family": families}


async def _wait_all(tezzeret: TezzeretClient, job_ids: list[str], timeout: float) -> list:
    deadline = time.monotonic() + timeout
    pending, done = set(job_ids), []
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs unfinished after {timeout}s")
        for job_id in list(pending):
            job = await tezzeret.get_job(job_id)
            if job.stage in TERMINAL:
                pending.discard(job_id)
                done.append(job)
        await asyncio.sleep(0.05)
    return done


async def throughput(config: TezzeretConfig, tezzeret: TezzeretClient, n_workers: int, channels: int) -> dict:
    deps = await connect(config)
    try:
        group = [deps.new_worker() for _ in range(n_workers)]
        for worker in group:
            await worker.start()
        while not all(w.assigned_partitions() for w in group):  # everyone joined the group
            await asyncio.sleep(0.1)
        specs = builtin_blueprints()
        start = time.perf_counter()
        jobs = [await tezzeret.submit(f"{s.name}@{s.version}", [target_for(s, channels)])
                for s in specs]
        done = await _wait_all(tezzeret, [j.job_id for j in jobs], timeout=600)
        elapsed = time.perf_counter() - start
    finally:
        await deps.close()
    ok = sum(1 for j in done if j.stage == telemetry_pb2.COMPILE_STAGE_REGISTERED)
    split = [w.jobs_done for w in group]
    print(f"  {n_workers} worker(s): {ok}/{len(jobs)} registered in {elapsed:.1f}s "
          f"-> {60 * ok / elapsed:.1f} jobs/min, split {split}")
    return {"workers": n_workers, "jobs": len(jobs), "registered": ok, "seconds": elapsed,
            "jobs_per_minute": 60 * ok / elapsed, "jobs_per_worker": split}


async def stack_throughput(channels: int) -> dict:
    state = Path(tempfile.mkdtemp(prefix="esper-bench-tezzeret-"))
    os.chmod(state, 0o755)  # PostgreSQL runs as nobody under root
    postgres = PostgresServer(state, free_port(), durable=False, die_with_parent=True)
    broker = Broker(state, free_port(), die_with_parent=True)
    store = ObjectStore(state, free_port(), "esper-bench", die_with_parent=True)
    urza = None
    runs: dict[int, list[dict]] = {1: [], 2: []}
    try:
        dsn, bootstrap, bucket = postgres.start(), broker.start(), store.start()
        urza_port = free_port()
        common = dict(metrics_port=-1, kafka_bootstrap=bootstrap)
        # Only Urza touches the object store; Tezzeret uploads kernels through Urza's API.
        urza = await start_server(urza_service.SPEC, urza_service.UrzaConfig(
            port=urza_port, postgres_dsn=dsn, s3_endpoint=bucket.url, s3_access_key=bucket.access_key,
            s3_secret_key=bucket.secret_key, s3_bucket=bucket.bucket, **common))
        # ABBA order cancels drift (warm caches, neighbours' load); every run has its own
        # job database and group, so the same 16 jobs at the same width are new each time.
        for index, n_workers in enumerate((1, 2, 2, 1)):
            database = f"tezzeret_run{index}"
            postgres.ensure_database(database)
            config = TezzeretConfig(
                port=free_port(), urza_address=f"127.0.0.1:{urza_port}", workers=0,
                postgres_dsn=postgres.dsn(database), consumer_group=f"bench-{index}",
                latency_samples=LATENCY_SAMPLES, **common)
            server = await start_server(tezzeret_service.SPEC, config)
            try:
                async with TezzeretClient(server.address, security=ChannelSecurity()) as tezzeret:
                    runs[n_workers].append(await throughput(config, tezzeret, n_workers, channels))
            finally:
                await server.stop(0)
    finally:
        if urza is not None:
            await urza.stop(0)
        for proc in (store, broker, postgres):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)
    one = statistics.mean(r["jobs_per_minute"] for r in runs[1])
    two = statistics.mean(r["jobs_per_minute"] for r in runs[2])
    return {"one_worker": {"jobs_per_minute": one, "runs": runs[1]},
            "two_workers": {"jobs_per_minute": two, "runs": runs[2]},
            "ratio_two_vs_one": two / one}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--channels", type=positive_int, default=64)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 16 channels")
    args = parser.parse_args()
    repeats, channels = (1, 16) if args.quick else (args.repeats, args.channels)
    print(f"compile+validate latency per blueprint (C={channels}, median of {repeats}):")
    latency = await pipeline_latency(channels, repeats)
    print("throughput with the real stack:")
    stack = await stack_throughput(channels)
    result = {
        "benchmark": "tezzeret",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "settings": {"channels": channels, "repeats": repeats, "latency_samples": LATENCY_SAMPLES,
                     "length": LENGTH, "spatial": SPATIAL},
        "compile_validate_latency": latency,
        "throughput": stack,
    }
    print(f"jobs/minute: 1 worker {stack['one_worker']['jobs_per_minute']:.1f}, 2 workers "
          f"{stack['two_workers']['jobs_per_minute']:.1f} (ratio {stack['ratio_two_vs_one']:.2f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
