"""Grow seeds in a PyTorch Lightning fit: one EsperCallback does the session's calls.

    pip install -e '.[lightning]'
    python examples/lightning_digits.py [--epochs N] [--checkpoint-dir DIR] [--resume CKPT]

The built-in digits task (a small CNN on scikit-learn's 8x8 digits) in a LightningModule,
with the in-process heuristic policy (it germinates once the validation loss plateaus,
around epoch 14). `--checkpoint-dir` keeps Lightning's last.ckpt
(seeds included); `--resume DIR/last.ckpt --epochs M` continues that run to epoch M.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from torch.nn import functional as F

from esper.tolaria.lightning import EsperCallback
from esper.tolaria.tasks import load_task


class Classifier(pl.LightningModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        # "outputs" and "targets" are optional: with them the session also reports accuracy.
        return {"loss": F.cross_entropy(out, y), "outputs": out.detach(), "targets": y}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))       # read by the callback at epoch end
        self.log("val_accuracy", (out.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)}


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", default=None, help="a last.ckpt written by --checkpoint-dir")
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    task = load_task("digits", batch_size=64, seed=0)
    esper = EsperCallback("local", module="net", example_input=task.example_input)
    callbacks = [esper]
    if args.checkpoint_dir:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=args.checkpoint_dir, save_last=True))
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                         callbacks=callbacks, enable_checkpointing=bool(args.checkpoint_dir),
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Classifier(task.model), task.train_loader, task.val_loader,
                ckpt_path=args.resume)
    print(esper.session.summary())
    grown = esper.session.model.unwrap()  # a plain nn.Module with the fossilized seeds
    print(f"grown model: {sum(p.numel() for p in grown.parameters())} parameters")
    return esper.session


if __name__ == "__main__":
    main()
