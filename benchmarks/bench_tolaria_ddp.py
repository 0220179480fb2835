"""Tolaria's cost under DistributedDataParallel: a plain DDP loop vs the same loop with
`esper.tolaria.attach` on every rank (local heuristic policy on rank 0, a safe point every
20 steps with its collectives: the metric all-reduce and rank 0's broadcast), on
`--world` gloo processes of this machine (CPU, one torch thread each).

The model is a Fashion-MNIST-shaped MLP 784-256-128-10 on random data (`--batch` per
rank, batches in memory). Both arms are DDP models of the same weights, stepped in turn
(AB BA AB ...: both see the same moments of a shared, noisy machine) after `--warmup`
untimed steps, and summed per window of 20 steps (one safe point each); each window
gives a Tolaria/plain ratio of rank 0's wall time. Medians and quartiles over `--windows`
windows are the result; absolute times depend on the machine's load. No validation is
reported, so the heuristic never sees a plateau and no seed grows (the run is refused
otherwise): this measures the protocol, not a seed.

`--host transformer`: the built-in character task's causal transformer
(esper.tolaria.shakespeare.CharTransformer, d_model 64, 2 blocks, 64-character sequences,
`--batch` of them per rank), which declares its residual stream. Its Tolaria arm
runs `esper.tolaria.ddp_model(session)` after attach, as a stream that may widen needs:
every parameter of this host is on the stream, so Tolaria averages all its gradients in
one all-reduce at the end of the backward pass, where the plain arm's DDP overlaps its
bucketed all-reduces with the backward. The ratio prices that.

    python benchmarks/bench_tolaria_ddp.py [--world 2] [--windows 30] [--host transformer]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import esper.tolaria
from esper.cli.numbers import non_negative_int, positive_int
from esper.tolaria.config import DEFAULT_SNAPSHOT_EVERY, TolariaConfig
from esper.tolaria.shakespeare import SEQ_LEN, CharTransformer

RESULTS = Path(__file__).parent / "results"
BATCHES = 50  # distinct batches, used in turn


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, 10))


VOCAB, D_MODEL = 65, 64


def _transformer() -> nn.Module:
    torch.manual_seed(0)
    return CharTransformer(VOCAB, D_MODEL)


def _batches(args: argparse.Namespace, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(rank)
    if args.host == "transformer":
        tokens = [torch.randint(0, VOCAB, (args.batch, SEQ_LEN), generator=gen) for _ in range(BATCHES)]
        return [(t, t) for t in tokens]
    return [(torch.rand(args.batch, 1, 28, 28, generator=gen),
             torch.randint(0, 10, (args.batch,), generator=gen)) for _ in range(BATCHES)]


def _worker(rank: int, args: argparse.Namespace, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=args.world)
    batches = _batches(args, rank)
    make = _transformer if args.host == "transformer" else _mlp
    plain = DDP(make())
    host = make()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)
    opt_grown = torch.optim.SGD(host.parameters(), lr=0.01, momentum=0.9)
    if args.host == "transformer":  # DDP after attach, so that the stream may widen
        session = esper.tolaria.attach(host, opt_grown, example_input=batches[0][0][:2],
                                       config=TolariaConfig(progress=False))
        grown = esper.tolaria.ddp_model(session)
    else:
        grown = DDP(host)
        session = esper.tolaria.attach(grown, opt_grown, example_input=batches[0][0],
                                       config=TolariaConfig(progress=False))

    def step(model, optimizer, i: int) -> float:
        x, y = batches[i % BATCHES]
        start = time.perf_counter()
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten()) if out.dim() == 3 else F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        if model is grown:
            session.step(loss, out, y)
        return time.perf_counter() - start

    for i in range(args.warmup):
        step(plain, opt_plain, i)
        step(grown, opt_grown, i)
    every = DEFAULT_SNAPSHOT_EVERY
    ratios = []
    for w in range(args.windows):
        t_plain = t_grown = 0.0
        for i in range(every):
            first, second = ((plain, opt_plain), (grown, opt_grown))[::1 if (w + i) % 2 else -1]
            a = step(*first, i)
            b = step(*second, i)
            t_plain += a if first[0] is plain else b
            t_grown += b if first[0] is plain else a
        ratios.append(t_grown / t_plain)
    grew = session.model.live_seed_count() or session.summary().seeds_germinated
    session.close()
    if rank == 0:
        Path(out).write_text(json.dumps({"ratios": ratios, "grew": bool(grew),
                                         "step_ms_plain": 1000 * t_plain / every}))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=positive_int, default=2)
    parser.add_argument("--windows", type=positive_int, default=30)
    parser.add_argument("--warmup", type=non_negative_int, default=40)
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--host", choices=("mlp", "transformer"), default="mlp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.spawn(_worker, args=(args, str(Path(tmp) / "pg"), out), nprocs=args.world)
        measured = json.loads(Path(out).read_text())
    if measured["grew"]:
        raise SystemExit("a seed germinated: this run measures no protocol cost alone")
    q = statistics.quantiles(measured["ratios"], n=4)
    result = {
        "benchmark": "tolaria_ddp", "world": args.world, "backend": "gloo (CPU)",
        "model": "MLP 784-256-128-10" if args.host == "mlp" else
                 "CharTransformer d_model 64 x2, stream averaged by Tolaria (ddp_model)",
        "batch_per_rank": args.batch,
        "snapshot_every": DEFAULT_SNAPSHOT_EVERY, "windows": args.windows,
        "ratio_median": round(statistics.median(measured["ratios"]), 4),
        "ratio_quartiles": [round(q[0], 4), round(q[2], 4)],
        "plain_step_ms_last_window": round(measured["step_ms_plain"], 3),
    }
    RESULTS.mkdir(exist_ok=True)
    name = "tolaria_ddp.json" if args.host == "mlp" else "tolaria_ddp_transformer.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
