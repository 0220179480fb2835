"""GroMo (PyPI `gromo` 0.1.0, TINY's growth by expressivity bottleneck) growing the same
small MLP host, by the procedure of its GrowingContainer tutorial: train for some epochs,
then grow one hidden layer (alternating layers): accumulate the growth statistics with a
forward/backward pass over the training set (summed loss), `compute_optimal_updates`,
line-search the new neurons' scale over (0, 0.1, 0.5, 1) on the training loss with
`extended_forward`, `apply_change`; repeat. The new neurons per growth are set so that the
model ends at about Esper's final parameter count for the seed. A fresh Adam is made after
each growth (the parameter tensors are replaced). Every statistics and line-search pass is
counted as training compute.

The host's initialisation is copied from the small MLP built with the seed, so GroMo
starts from exactly the weights every other small-host arm starts from.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from . import hosts
from .arms import Context, NotAvailable, _adam
from .data import Splits
from .flops import FlopMeter
from .loop import train

# GroMo warns on every growth whose statistics matrix is singular (it then uses the
# pseudo-inverse, as documented): expected here, and not worth a line per growth.
warnings.filterwarnings("ignore", message="Using the pseudo-inverse", category=UserWarning)

LINE_SEARCH = (0.0, 0.1, 0.5, 1.0)
GROWTH_STEPS = 4


def growth_epochs(epochs: int) -> list[int]:
    """Epoch indices after which GroMo grows: every E/8 epochs, GROWTH_STEPS times (the
    tutorial alternates a few epochs of training with each growth)."""
    every = max(1, epochs // 8)
    return [every * (i + 1) - 1 for i in range(GROWTH_STEPS) if every * (i + 1) < epochs]


def _model(ctx: Context):
    try:
        from gromo.containers.growing_mlp import GrowingMLP
    except ImportError as exc:
        raise NotAvailable(f"gromo is not installed ({exc}); pip install gromo==0.1.0") from exc
    torch.manual_seed(ctx.seed)
    host = hosts.small("mlp")
    model = GrowingMLP(hosts.SIDE * hosts.SIDE, hosts.CLASSES, hidden_size=hosts.MLP_SMALL[0],
                       number_hidden_layers=2, activation=torch.nn.ReLU())
    with torch.no_grad():
        for layer, linear in zip(model.layers, (host.fc1, host.fc2, host.fc3), strict=True):
            layer.layer.weight.copy_(linear.weight)
            layer.layer.bias.copy_(linear.bias)
    return model


def _neuron_cost(model, index: int) -> int:
    """Parameters one new neuron adds between layers[index] and layers[index + 1]."""
    before, after = model.layers[index], model.layers[index + 1]
    return before.in_features + 1 + after.out_features


def grow(model, data: Splits, meter: FlopMeter, layer: int, neurons: int) -> dict:
    """One growth of hidden layer `layer` (0-based) by up to `neurons` neurons."""
    before = hosts.params(model)
    with meter.counted("extra"):
        model.eval()
        model.set_growing_layers(index=layer)  # growable layer `layer` = layers[layer + 1]
        model.init_computation()
        for x, y in Splits.batches(data.x_train, data.y_train, data.batch_size):
            model.zero_grad()
            loss = F.cross_entropy(model(x), y, reduction="sum")
            loss.backward()
            model.update_computation()
        model.compute_optimal_updates(maximum_added_neurons=neurons)
        model.reset_computation()
        model.dummy_select_update()
        losses = {}
        with torch.no_grad():
            for value in LINE_SEARCH:
                model.set_scaling_factor(value)
                total = sum(float(F.cross_entropy(model.extended_forward(x), y, reduction="sum"))
                            for x, y in Splits.batches(data.x_train, data.y_train))
                losses[value] = total / len(data.y_train)
        best = min(losses, key=losses.get)
        model.set_scaling_factor(best)
        model.apply_change()
        model.zero_grad()
        model.train()
    return {"layer": layer, "asked": neurons, "scale": best, "added_params": hosts.params(model) - before}


def run(ctx: Context) -> dict:
    if ctx.host != "mlp":
        raise NotAvailable("not yet: the GroMo arm grows the MLP host only (its CNN needs a "
                           "GroMo container for this host's conv/pool/fc layout)")
    model = _model(ctx)
    target = ctx.esper()["params"]
    if ctx.quick:
        target = max(target, int(1.1 * hosts.params(model)))
    meter = FlopMeter()
    when = growth_epochs(ctx.epochs)
    growths: list[dict] = []

    def after_epoch(epoch: int, val_loss: float):
        if epoch not in when:
            return None
        left = len([e for e in when if e >= epoch])
        layer = len(growths) % 2
        budget = (target - hosts.params(model)) / left
        neurons = round(budget / _neuron_cost(model, layer))
        if neurons < 1:
            return None
        growths.append({"epoch": epoch + 1, **grow(model, ctx.data, meter, layer, neurons)})
        return _adam(model)

    record = train(model, _adam(model), ctx.data, seed=ctx.seed, epochs=ctx.epochs,
                   meter=meter, after_epoch=after_epoch)
    record.update({"growths": growths, "target_params": target})
    return record
