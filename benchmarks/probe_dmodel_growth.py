"""Probe: does growing the character transformer's d_model in place, mid-training, beat
training the wide model from the start at matched training FLOPs? (The mechanism the
char host of `morphogenesis.py` lacks; see morpho/dmodel.py. Not yet a Kasmina seed.)

Arms, per seed, the harness's data, order, cosine schedule, FLOP counting and seeds:
- grow: d_model 32, grown after the epoch(s) --grow-epoch: doubled to 64 (--grow-by 0,
  features duplicated, Adam's moments carried unless --fresh-moments) or widened by
  --grow-by features each time (new features at the old ones' mean, fresh moments);
- wide: the final d_model from the start, the full run;
- wide-fitted: the same, its run shortened (and annealed) to grow's FLOPs.
With --reset-moments the wide arms restart Adam's moments after the same epochs (what
growth with fresh moments does to the grown model's optimizer, without the growth).

    python benchmarks/probe_dmodel_growth.py --seed 0 --epochs 20 --grow-epoch 3 \
        --arms grow,wide-fitted,wide --out /tmp/dm/s0.json   # ~7 min on one core
    python benchmarks/probe_dmodel_growth.py --seed 0 --epochs 20 --grow-epoch 2,4 \
        --grow-by 8 --reset-moments --arms grow,wide-fitted --out /tmp/dm/g0.json  # ~4 min

Measured (results/morphogenesis-char-dmodel-probe.json holds the runs and their flags):
- Doubled after epoch 3, the grown model ends 5.38 and 3.11 pp below the wide model fitted
  to its FLOPs (seeds 0 and 1: 38.26 and 40.37 against 43.64 and 43.48, 4,138 GFLOPs each).
  With fresh Adam moments it ends 2.80 pp below (seed 0); with fresh moments and noise of
  the rows' spread (--noise 1.0), -1.01 and +0.08 pp: duplication buys nothing.
- Grown 32 -> 40 -> 48 after epochs 2 and 4 (--grow-by 8), 5 seeds: 42.89 +- 0.50 against
  42.18 +- 0.26 for d_model 48 from the start fitted to the same 2,459 GFLOPs with its
  moments restarted at the same epochs: +0.72 +- 0.33 pp, 5 wins of 5. Without the restart
  the wide model ends 2.4-2.6 pp lower (seeds 0 and 1): restarting Adam's moments alone is
  worth 1.5-1.7 pp on this host, so the control gets it too.
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
from morpho.dmodel import double_d_model, grow_d_model  # noqa: E402
from morpho.flops import FlopMeter, count_every_pass  # noqa: E402
from morpho.loop import LEARNING_RATE, train  # noqa: E402

from esper.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int
from esper.tolaria.optim import restart_moments  # noqa: E402

SEED_BASE = 3_000_000  # the harness's: the same weights and batch order per seed


def _run(d: int, data, seed: int, epochs: int, grow_epochs: tuple[int, ...] = (),
         max_steps: int | None = None, grow_by: int = 0, **growth) -> dict:
    """`grow_by` 0: d_model doubled after the epoch in `grow_epochs`; > 0: widened by that
    many features (new features at the old ones' mean) after each epoch in it."""
    torch.manual_seed(seed)
    net = text.CharTransformer(data.vocab_size, d)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    holder = {"opt": optimizer}

    def after_epoch(epoch: int, _val: float):
        if epoch + 1 not in grow_epochs:
            return None
        if d != 32:  # a wide arm with --reset-moments: Adam's moments restarted, no growth
            restart_moments(holder["opt"])  # what growth does to the optimizer, without growth
        elif grow_by:
            holder["opt"] = grow_d_model(net, holder["opt"], extra=grow_by, seed=seed + epoch)
        else:
            holder["opt"] = double_d_model(net, holder["opt"], seed=seed, **growth)
        return holder["opt"]

    return train(net, optimizer, data, seed=seed, epochs=epochs, meter=FlopMeter(),
                 after_epoch=after_epoch, lr_schedule="cosine", max_steps=max_steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--epochs", type=positive_int, default=20)
    ap.add_argument("--grow-epoch", default="3",
                    help="the epoch(s) after which d_model grows, comma-separated")
    ap.add_argument("--grow-by", type=non_negative_int, default=0,
                    help="features added at each growth (a multiple of the 4 heads; new "
                         "features start at the old ones' mean, morpho.dmodel.grow_d_model); "
                         "0: d_model doubled once, its features duplicated (double_d_model)")
    ap.add_argument("--arms", default="grow,wide-fitted")
    ap.add_argument("--budget-gflops", type=positive_float, default=None,
                    help="wide-fitted's FLOPs (default: this run's grow arm)")
    ap.add_argument("--fresh-moments", action="store_true")
    ap.add_argument("--reset-moments", action="store_true",
                    help="the wide arms restart Adam's moments after the growth epochs, as "
                         "--grow-by's growth does (a control for that restart alone)")
    ap.add_argument("--noise", type=non_negative_float, default=0.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    count_every_pass()
    data = text.load(TEXT_BATCH_SIZE)
    seed = SEED_BASE + args.seed
    grow_epochs = tuple(int(e) for e in args.grow_epoch.split(","))
    if not args.grow_by and len(grow_epochs) != 1:
        ap.error("doubling (--grow-by 0) grows once: give one --grow-epoch")
    width = 32 + args.grow_by * len(grow_epochs) if args.grow_by else 64
    out: dict = {"seed": args.seed, "epochs": args.epochs, "grow_epoch": args.grow_epoch,
                 "grow_by": args.grow_by, "width": width,
                 "reset_moments": args.reset_moments}
    wide_resets = grow_epochs if args.reset_moments else ()
    arms = args.arms.split(",")
    if "grow" in arms:
        out["grow"] = _run(32, data, seed, args.epochs, grow_epochs=grow_epochs,
                           grow_by=args.grow_by, fresh_moments=args.fresh_moments, noise=args.noise)
    if "wide" in arms:
        out["wide"] = _run(width, data, seed, args.epochs, grow_epochs=wide_resets)
    if "wide-fitted" in arms:
        budget = args.budget_gflops * 1e9 if args.budget_gflops else out["grow"]["flops"]["total"]
        # The wide run's costs per step and per validation, measured on one short run.
        probe = _run(width, data, seed, 1, max_steps=2)
        record = {"flops": {"total": float("inf"),
                            "train": probe["flops"]["train"] / 2 * args.epochs * data.steps_per_epoch,
                            "validation": probe["flops"]["validation"] * args.epochs}}
        steps = fitted_steps(record, budget, data.steps_per_epoch, args.epochs)
        out["wide-fitted"] = _run(width, data, seed, args.epochs, max_steps=steps,
                                  grow_epochs=wide_resets)
    for arm in arms:
        r = out[arm]
        print(f"{arm:12s} test acc {100 * r['test_accuracy']:.2f}  GFLOPs {r['flops']['total'] / 1e9:,.0f}"
              f"  params {r['params']:,}  wall {r['wall_s']:.0f} s", flush=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
