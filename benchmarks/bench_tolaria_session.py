"""Tolaria's cost on a training step: the built-in digits CNN trained by a plain loop vs the
same loop with `esper.tolaria.attach(..., policy="none")` (seed slots, metrics, layer health,
snapshots; no seeds germinate, so the model's compute is the same). Layer health is measured
at two sampling periods. Trials are interleaved (ABAB…) and the median ratio is reported.

    python benchmarks/bench_tolaria_session.py [--trials 7] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import esper.tolaria
from esper.tolaria.config import TolariaConfig
from esper.tolaria.tasks import SmallCNN, load_task

RESULTS = Path(__file__).parent / "results" / "tolaria_session.json"


def _batches(steps: int):
    task = load_task("digits", batch_size=64, seed=0)
    out = []
    while len(out) < steps:
        out.extend(task.train_loader)
    return out[:steps], task.example_input


def _step_time(batches, example_input, sample_every: int | None) -> float:
    torch.manual_seed(0)
    model = SmallCNN(side=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    session = None
    if sample_every is not None:
        config = TolariaConfig(progress=False, health_sample_every=sample_every)
        session = esper.tolaria.attach(model, optimizer, policy="none", config=config,
                                       example_input=example_input)
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        if session is not None:
            session.step(loss, out, y)
    elapsed = time.perf_counter() - start
    if session is not None:
        session.close()
    return elapsed / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches, example_input = _batches(args.steps)
    arms = {"plain": None, "tolaria_health_every_step": 1, "tolaria_health_sampled_1_in_4": 4}
    times = {name: [] for name in arms}
    _step_time(batches, example_input, None)  # warm-up
    for _ in range(args.trials):
        for name, sample in arms.items():
            times[name].append(_step_time(batches, example_input, sample))
    plain = statistics.median(times["plain"])
    result = {
        "steps_per_trial": args.steps, "trials": args.trials,
        "median_step_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
        "ratio_vs_plain": {k: statistics.median(v) / plain for k, v in times.items() if k != "plain"},
    }
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
