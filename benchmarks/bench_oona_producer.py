"""The Oona producer's cost on a training step (target: <= 1 %).

A small MLP trains on random data on CPU. The baseline step is forward, backward and
optimizer step; the measured step also builds a TrainingSnapshot (metrics, a few layers,
a seed) and publishes it through ThreadedOonaProducer to a real tansu broker, as Tolaria
does once per step. Baseline and publishing blocks alternate (A B B A ...) so drift and
other load hit both; the claim is the ratio of the median publishing step time to the
median baseline step time, minus one.

    .venv/bin/python benchmarks/bench_oona_producer.py [--blocks 10] [--steps 200]

Writes benchmarks/results/bench_oona_producer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch
from esper.leyline.v1 import lifecycle_pb2, signals_pb2
from esper.oona import ThreadedOonaProducer, new_event
from esper.runtime.infra import Broker, free_port

RESULTS = Path(__file__).parent / "results" / "bench_oona_producer.json"
TARGET_OVERHEAD = 0.01
# A small but real model: a step of a few milliseconds on CPU, like the tests' MLPs.
WIDTH = 256
BATCH = 64
LAYERS = 4


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(LAYERS):
        layers += [torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def train_step(model, optimizer, x, y) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def snapshot_event(run_id: str, step: int, loss: float):
    snap = signals_pb2.TrainingSnapshot(run_id=run_id, step=step, sequence=step)
    snap.time.GetCurrentTime()
    snap.metrics.train_loss = loss
    snap.metrics.learning_rate = 0.01
    for layer in range(LAYERS):
        snap.layers.add(layer_id=f"{layer * 2}", gradient_norm=0.1, activation_std=1.0)
    snap.seeds.add(seed_id="s0", slot_id="slot0", stage=lifecycle_pb2.SEED_STAGE_DORMANT)
    snap.resources.total_params = 1
    return new_event(source="tolaria", run_id=run_id, snapshot=snap)


def run_block(model, optimizer, data, steps: int, producer, run_id: str, step0: int) -> list[float]:
    x, y = data
    times = []
    for i in range(steps):
        start = time.perf_counter()
        loss = train_step(model, optimizer, x, y)
        if producer is not None:
            producer.publish(snapshot_event(run_id, step0 + i, loss))
        times.append(time.perf_counter() - start)
    return times


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)  # the producer thread competes for the same cores
    state = Path(tempfile.mkdtemp(prefix="esper-bench-oona-"))
    broker = Broker(state, free_port())
    broker.start()
    producer = ThreadedOonaProducer(broker.bootstrap, client_id="bench").start()
    try:
        assert producer.wait_connected(30)
        model, optimizer = make_model()
        data = (torch.randn(BATCH, WIDTH), torch.randint(0, 10, (BATCH,)))
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        run_block(model, optimizer, data, args.steps, producer, run_id, 0)  # warm-up
        base, publishing = [], []
        order = ["A", "B", "B", "A"] * (args.blocks // 2)
        for n, kind in enumerate(order):
            with_producer = producer if kind == "B" else None
            times = run_block(
                model, optimizer, data, args.steps, with_producer, run_id, (n + 1) * args.steps
            )
            (publishing if kind == "B" else base).extend(times)
        assert producer.flush(60)
        stats = producer.stats()
    finally:
        producer.stop()
        broker.stop()
        shutil.rmtree(state, ignore_errors=True)
    base_ms = statistics.median(base) * 1000
    pub_ms = statistics.median(publishing) * 1000
    overhead = pub_ms / base_ms - 1
    return {
        "benchmark": "oona_producer_step_cost",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_avg_1m": os.getloadavg()[0],
        },
        "model": {"width": WIDTH, "layers": LAYERS, "batch": BATCH},
        "steps_per_arm": len(base),
        "baseline_step_ms_median": base_ms,
        "publishing_step_ms_median": pub_ms,
        "baseline_step_ms_mean": statistics.fmean(base) * 1000,
        "publishing_step_ms_mean": statistics.fmean(publishing) * 1000,
        "step_time_ratio": pub_ms / base_ms,
        "overhead": overhead,
        "target_overhead": TARGET_OVERHEAD,
        "meets_target": overhead <= TARGET_OVERHEAD,
        "events_sent": stats.sent,
        "events_dropped": stats.dropped,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    result = main(parser.parse_args())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
