"""Kasmina step-time overhead, measured as ratios in one run.

1. Dormant overhead: a model wrapped with a slot after every eligible layer (all dormant)
   vs the unwrapped model; forward+backward+SGD step time for an MLP, a CNN and a small
   transformer. Target <= 1.03x on CPU.
2. Fossilized vs static: a wrapped model with fossilized seeds (one merged LoRA seed,
   one residual MLP seed) vs an equivalent static model built from plain modules (the
   merged Linear and an explicit residual block). Target <= 1.02x.

Trials are interleaved (A, B, A, B...) and the median of per-trial ratios is reported.
Prints and writes JSON to benchmarks/results/bench_kasmina_overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.cli.numbers import positive_int
from esper.kasmina import wrap
from esper.kasmina.testing import force_fossilize

RESULTS = Path(__file__).parent / "results" / "bench_kasmina_overhead.json"


def mlp():
    return nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512), nn.ReLU(), nn.Linear(512, 512),
                         nn.ReLU(), nn.Linear(512, 10)), torch.randn(128, 256)


def cnn():
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)), torch.randn(32, 3, 32, 32)


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(32, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def transformer():
    return Transformer(), torch.randn(16, 32, 32)


def step_fn(model, x):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).float().square().mean().backward()
        opt.step()

    return step


def time_steps(step, n):
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def compare(step_a, step_b, trials, n):
    for _ in range(3):
        step_a(), step_b()
    ratios, ta, tb = [], [], []
    for _ in range(trials):
        a, b = time_steps(step_a, n), time_steps(step_b, n)
        ta.append(a), tb.append(b), ratios.append(b / a)
    return {"baseline_ms": statistics.median(ta) * 1e3, "candidate_ms": statistics.median(tb) * 1e3,
            "median_ratio": statistics.median(ratios), "trials": trials, "steps_per_trial": n}


def dormant(make, trials, n):
    torch.manual_seed(0)
    plain, x = make()
    wrapped = wrap(copy.deepcopy(plain), example_input=x)
    res = compare(step_fn(plain, x), step_fn(wrapped, x), trials, n)
    res["slots"] = len(wrapped.slots)
    return res


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, h):
        return h + self.body(h)


def fossil(trials, n):
    torch.manual_seed(0)
    plain, x = mlp()
    wrapped = wrap(copy.deepcopy(plain), ["0", "3"], example_input=x)
    seeds = {}
    for sid, ref in (("0", "BP-LORA-R8@1.0.0"), ("3", "BP-MLP-GELU@1.0.0")):
        slot = wrapped.slots[sid]
        seed = build_seed(get_builtin(ref), slot.shape)
        with torch.no_grad():
            for p in seed.parameters():
                p.normal_(0, 0.02)
        seeds[sid] = copy.deepcopy(seed)
        force_fossilize(slot, seed)
    # the equivalent static model: merged first Linear, explicit residual after the 4th
    for slot in wrapped.slots.values():
        slot.remove_hook()
    static = copy.deepcopy(wrapped.host)
    for slot in wrapped.slots.values():
        slot.install_hook()
    static[3] = nn.Sequential(static[3], Residual(copy.deepcopy(wrapped.slots["3"].seed)))
    torch.testing.assert_close(static(x), wrapped(x), atol=1e-5, rtol=1e-5)
    res = compare(step_fn(static, x), step_fn(wrapped, x), trials, n)
    res["merged"] = [s.slot_id for s in wrapped.slots.values() if s.record.merged]
    return res


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=positive_int, default=15)
    parser.add_argument("--steps", type=positive_int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # stable timings on a shared machine
    out = {"device": "cpu", "torch": torch.__version__, "machine": platform.machine(),
           "threads": 1, "dormant": {}, "targets": {"dormant": 1.03, "fossil": 1.02}}
    for name, make in (("mlp", mlp), ("cnn", cnn), ("transformer", transformer)):
        out["dormant"][name] = dormant(make, args.trials, args.steps)
        print(f"dormant {name}: {out['dormant'][name]}")
    out["fossil_vs_static"] = fossil(args.trials, args.steps)
    print(f"fossil vs static: {out['fossil_vs_static']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
