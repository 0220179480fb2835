"""Probe: does doubling the character transformer's d_model in place, mid-training, beat
training the wide model from the start at matched training FLOPs? (The mechanism the
char host of `morphogenesis.py` lacks; see morpho/dmodel.py. Not yet a Kasmina seed.)

Arms, per seed, the harness's data, order, cosine schedule, FLOP counting and seeds:
- grow: d_model 32, doubled to 64 after epoch --grow-epoch (Adam's moments carried);
- wide: d_model 64 from the start, the full run;
- wide-fitted: d_model 64 from the start, its run shortened (and annealed) to grow's FLOPs.

    python benchmarks/probe_dmodel_growth.py --seed 0 --epochs 20 --grow-epoch 3 \
        --arms grow,wide-fitted,wide --out /tmp/dm/s0.json   # ~7 min on one core

Measured (results/morphogenesis-char-dmodel-probe.json holds the runs and their flags): doubled after
epoch 3, the grown model ends 5.38 and 3.11 pp below the wide model fitted to its FLOPs
(seeds 0 and 1: 38.26 and 40.37 against 43.64 and 43.48, 4,138 GFLOPs each). With fresh Adam
moments it ends 2.80 pp below (seed 0). With fresh moments and noise of the rows' spread
(--noise 1.0) it ends -1.01 and +0.08 pp. In this regime growing d_model buys nothing that
choosing it up front does not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from morpho import text  # noqa: E402
from morpho.arms import fitted_steps  # noqa: E402
from morpho.cli import TEXT_BATCH_SIZE  # noqa: E402
from morpho.dmodel import double_d_model  # noqa: E402
from morpho.flops import FlopMeter, count_every_pass  # noqa: E402
from morpho.loop import LEARNING_RATE, train  # noqa: E402

SEED_BASE = 3_000_000  # the harness's: the same weights and batch order per seed


def _run(d: int, data, seed: int, epochs: int, grow_epoch: int | None = None,
         max_steps: int | None = None, **growth) -> dict:
    torch.manual_seed(seed)
    net = text.CharTransformer(data.vocab_size, d)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    holder = {"opt": optimizer}

    def after_epoch(epoch: int, _val: float):
        if grow_epoch is not None and epoch + 1 == grow_epoch:
            holder["opt"] = double_d_model(net, holder["opt"], seed=seed, **growth)
            return holder["opt"]
        return None

    return train(net, optimizer, data, seed=seed, epochs=epochs, meter=FlopMeter(),
                 after_epoch=after_epoch, lr_schedule="cosine", max_steps=max_steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--grow-epoch", type=int, default=3)
    ap.add_argument("--arms", default="grow,wide-fitted")
    ap.add_argument("--budget-gflops", type=float, default=None,
                    help="wide-fitted's FLOPs (default: this run's grow arm)")
    ap.add_argument("--fresh-moments", action="store_true")
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    count_every_pass()
    data = text.load(TEXT_BATCH_SIZE)
    seed = SEED_BASE + args.seed
    out: dict = {"seed": args.seed, "epochs": args.epochs, "grow_epoch": args.grow_epoch}
    arms = args.arms.split(",")
    if "grow" in arms:
        out["grow"] = _run(32, data, seed, args.epochs, grow_epoch=args.grow_epoch,
                           fresh_moments=args.fresh_moments, noise=args.noise)
    if "wide" in arms:
        out["wide"] = _run(64, data, seed, args.epochs)
    if "wide-fitted" in arms:
        budget = args.budget_gflops * 1e9 if args.budget_gflops else out["grow"]["flops"]["total"]
        # The wide run's costs per step and per validation, measured on one short run.
        probe = _run(64, data, seed, 1, max_steps=2)
        record = {"flops": {"total": float("inf"),
                            "train": probe["flops"]["train"] / 2 * args.epochs * data.steps_per_epoch,
                            "validation": probe["flops"]["validation"] * args.epochs}}
        steps = fitted_steps(record, budget, data.steps_per_epoch, args.epochs)
        out["wide-fitted"] = _run(64, data, seed, args.epochs, max_steps=steps)
    for arm in arms:
        r = out[arm]
        print(f"{arm:12s} test acc {100 * r['test_accuracy']:.2f}  GFLOPs {r['flops']['total'] / 1e9:,.0f}"
              f"  params {r['params']:,}  wall {r['wall_s']:.0f} s", flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
