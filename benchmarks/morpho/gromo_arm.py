"""GroMo (PyPI `gromo` 0.1.0, TINY's growth by expressivity bottleneck) growing the same
small host (see `_model`), by the procedure of its GrowingContainer tutorial: train for
some epochs, then grow one layer's input (alternating over GroMo's growable layers):
accumulate the growth statistics with a
forward/backward pass over the training set (summed loss), `compute_optimal_updates`,
line-search the new neurons' scale over (0, 0.1, 0.5, 1) on the training loss with
`extended_forward`, `apply_change`; repeat. The new neurons per growth are set so that the
model ends at about Esper's final parameter count for the seed. A fresh Adam is made after
each growth (the parameter tensors are replaced). Every statistics and line-search pass is
counted as training compute.

Where the tutorial's run spends less than Esper's, a second run of the same procedure for
more epochs (growing at the same fractions of it, to the same size) spends at least
Esper's FLOPs: Esper has beaten GroMo at no more than GroMo's FLOPs only if it beats
that run too.

The host's initialisation is copied from the small host built with the seed, so GroMo
starts from exactly the weights every other small-host arm starts from.
"""

from __future__ import annotations

import math
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
# Epochs added to GroMo's longer run, one at a time, should it still fall short of Esper's FLOPs.
MAX_EXTRA_EPOCHS = 3


def growth_epochs(epochs: int) -> list[int]:
    """Epoch indices after which GroMo grows: every E/8 epochs, GROWTH_STEPS times (the
    tutorial alternates a few epochs of training with each growth)."""
    every = max(1, epochs // 8)
    return [every * (i + 1) - 1 for i in range(GROWTH_STEPS) if every * (i + 1) < epochs]


def _model(ctx: Context):
    """GroMo's container for the host, with the small host's initial weights copied in.

    MLP: GrowingMLP (two hidden layers; both grow). CNN: GroMo's VGG with cfg [c1, M, c2],
    no normalisation or dropout and two classifier layers, which is exactly this CNN (the
    4x4 average pool comes from input_spatial_shape (8, 8) halved by the max-pool); GroMo
    grows its classifier's hidden layer (it offers no growth of a conv whose input comes
    through a pooling stage)."""
    if ctx.host == "char":
        raise NotAvailable("GroMo 0.1.0 grows MLPs and convolutional networks, not transformers")
    try:
        from gromo.containers.growing_mlp import GrowingMLP
        from gromo.containers.vgg import VGG
    except ImportError as exc:
        raise NotAvailable(f"gromo is not installed ({exc}); pip install gromo==0.1.0") from exc
    torch.manual_seed(ctx.seed)
    host = hosts.small(ctx.host)
    if ctx.host == "mlp":
        model = GrowingMLP(hosts.SIDE * hosts.SIDE, hosts.CLASSES, hidden_size=hosts.MLP_SMALL[0],
                           number_hidden_layers=2, activation=torch.nn.ReLU())
        pairs = zip(model.layers, (host.fc1, host.fc2, host.fc3), strict=True)
    else:
        c = hosts.CNN_SMALL
        model = VGG([c["c1"], "M", c["c2"]], in_features=1, activation=torch.nn.ReLU(),
                    normalization=None, num_classes=hosts.CLASSES, dropout=0.0,
                    number_of_fc_layers=2, fc_layer_width=4 * c["hidden"],
                    initial_fc_layer_width=c["hidden"], input_spatial_shape=(8, 8))
        pairs = zip((model.features[0].convs[0], model.features[2].convs[0],
                     model.classifier[0], model.classifier[2]),
                    (host.conv1, host.conv2, host.fc1, host.fc2), strict=True)
    with torch.no_grad():
        for growing, plain in pairs:
            growing.layer.weight.copy_(plain.weight)
            growing.layer.bias.copy_(plain.bias)
    if hosts.params(model) != hosts.params(host):
        raise RuntimeError("the GroMo model does not match the host")
    return model


def _neuron_cost(model, index: int) -> int:
    """Parameters one new neuron adds when growable layer `index` grows its input."""
    layer = model._growable_layers[index]
    return layer.previous_module.in_features + 1 + layer.out_features


def grow(model, data: Splits, meter: FlopMeter, layer: int, neurons: int) -> dict:
    """One growth of the input of growable layer `layer` by up to `neurons` neurons."""
    before = hosts.params(model)
    with meter.counted("extra"):
        model.eval()
        model.set_growing_layers(index=layer)
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
    """GroMo's run of ctx.epochs epochs; where Esper's run spent more FLOPs, with a second
    run in record["milestones"]["esper-flops"]: the same procedure for as many epochs as
    bring its FLOPs to at least Esper's (see longer_epochs). Esper must then beat GroMo
    given Esper's compute, not only GroMo's tutorial length."""
    record = _procedure(ctx, ctx.epochs)
    budget = ctx.esper()["flops"]["total"]
    if record["flops"]["total"] >= budget:
        return record
    epochs = longer_epochs(record["flops"], budget, ctx.epochs)
    longer = _procedure(ctx, epochs)
    for _ in range(MAX_EXTRA_EPOCHS):  # its growth steps land on whole epochs: a rare shortfall
        if longer["flops"]["total"] >= budget:
            break
        epochs += 1
        longer = _procedure(ctx, epochs)
    record["milestones"] = {"esper-flops": {
        "test_accuracy": longer["test_accuracy"], "flops": longer["flops"]["total"],
        "epoch": float(epochs), "reached": longer["flops"]["total"] >= budget, "longer_run": True,
        "wall_s": longer["wall_s"], "curve": longer["curve"], "growths": longer["growths"]}}
    return record


def longer_epochs(flops: dict, budget: float, epochs: int) -> int:
    """Epochs of GroMo's procedure whose FLOPs reach `budget`, from a run of `epochs`
    epochs that spent `flops` (by kind): its training and validation scale with the
    epochs, its growth passes ("extra": four statistics and line-search passes over the
    training set) do not."""
    per_epoch = (flops["total"] - flops["extra"]) / epochs
    return max(epochs + 1, math.ceil((budget - flops["extra"]) / per_epoch))


def _procedure(ctx: Context, epochs: int) -> dict:
    """GroMo's tutorial procedure on the small host for `epochs` epochs, grown to about
    Esper's final parameter count (record["growths"])."""
    model = _model(ctx)
    target = ctx.esper()["params"]
    if ctx.quick:
        target = max(target, int(1.1 * hosts.params(model)))
    meter = FlopMeter()
    when = growth_epochs(epochs)
    growths: list[dict] = []

    def after_epoch(epoch: int, val_loss: float):
        if epoch not in when:
            return None
        left = len([e for e in when if e >= epoch])
        layer = len(growths) % len(model._growable_layers)  # alternating, as the tutorial
        budget = (target - hosts.params(model)) / left
        neurons = round(budget / _neuron_cost(model, layer))
        if neurons < 1:
            return None
        growths.append({"epoch": epoch + 1, **grow(model, ctx.data, meter, layer, neurons)})
        return _adam(model, ctx.learning_rate)

    record = train(model, _adam(model, ctx.learning_rate), ctx.data, seed=ctx.seed, epochs=epochs,
                   meter=meter, after_epoch=after_epoch, lr_schedule=ctx.lr_schedule)
    record.update({"growths": growths, "target_params": target})
    return record
