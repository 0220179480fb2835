"""Keep your own training loop: attach Tolaria with two calls (the hook API).

    python examples/own_loop.py [--epochs N]

A model built from torch.nn only, trained on scikit-learn's digits with a plain PyTorch
loop; `session.step` after each optimizer step and `session.end_epoch` after validation
(on held-out data, in eval mode without gradients) let the in-process heuristic policy
grow seeds in it. The run ends with a report: each seed's slot, blueprint, why it was
germinated, its stages and its fate.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import esper.tolaria


def data(batch_size: int = 64):
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    train = TensorDataset(x[:1400], y[:1400])
    return DataLoader(train, batch_size=batch_size, shuffle=True), (x[1400:], y[1400:])


def main(argv: list[str] | None = None) -> esper.tolaria.RunSummary:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train_loader, (x_val, y_val) = data()

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Seed slots after the two hidden layers (by default every eligible layer gets one,
    # the output logits included).
    session = esper.tolaria.attach(model, optimizer, slots=["0", "2"], example_input=x_val[:2])

    for epoch in range(args.epochs):
        for x, y in train_loader:
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            session.step(loss, out, y)          # after optimizer.step(), before zero_grad()
        # Validate in eval mode without gradients: a train-mode pass would count as
        # training health and move BatchNorm statistics; back to train mode after.
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            val = {"val_loss": F.cross_entropy(out, y_val).item(),
                   "val_accuracy": (out.argmax(-1) == y_val).float().mean().item()}
        model.train()
        session.end_epoch(val)
        print(f"epoch {epoch + 1}: val_loss {val['val_loss']:.4f} "
              f"val_acc {val['val_accuracy']:.3f} live seeds {session.live_seed_count()}")

    session.close()                 # settles live seeds: the final model is well defined
    summary = session.summary()     # a RunSummary; str() is the report below
    print(summary)
    return summary


if __name__ == "__main__":
    main()
