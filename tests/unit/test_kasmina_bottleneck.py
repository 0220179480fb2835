"""Bottleneck initialisation (KasminaConfig.seed_init="bottleneck"): what a GERMINATED seed
gathers, what it sets as it enters TRAINING, and that the run computes the same meanwhile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.kasmina import KasminaConfig, wrap
from esper.kasmina.bottleneck import BottleneckStatistic, entry_linear
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from tests.unit.test_kasmina_slot import data as _data
from tests.unit.test_kasmina_slot import mlp as _mlp
from tests.unit.test_kasmina_slot import seed_for
from tests.unit.test_kasmina_slot import train_steps as _steps

S = SeedStage


def test_only_seeds_with_a_linear_reading_the_slot_qualify():
    features = SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=8)
    mlp = build_seed(get_builtin("BP-MLP-GELU@1.0.0"), features)
    assert entry_linear(mlp, features.kind) is mlp.ops["fc1"]
    norm = build_seed(get_builtin("BP-NORM-LAYER@1.0.0"), features)
    assert entry_linear(norm, features.kind) is None
    conv = SlotShape(kind=SlotKind.SLOT_KIND_CONV2D, channels=8)
    assert entry_linear(build_seed(get_builtin("BP-CONV-RES3X3@1.0.0"), conv), conv.kind) is None
    assert entry_linear(nn.Linear(8, 8), features.kind) is None  # not a blueprint's seed


def test_the_statistic_is_the_sum_of_delta_h_transposed():
    layer = nn.Linear(5, 4)
    stat = BottleneckStatistic(4, torch.device("cpu"))
    layer.register_forward_hook(stat.hook)
    xs = [torch.randn(3, 5) for _ in range(2)]
    expected = torch.zeros(4, 4, dtype=torch.float64)
    for x in xs:
        h = layer(x)
        h.retain_grad()
        (h.sin().sum()).backward()
        expected += h.grad.double().T @ h.detach().double()
    torch.testing.assert_close(stat.m, expected)
    assert stat.samples == 6
    with torch.no_grad():  # validation passes add nothing
        layer(torch.randn(3, 5))
    layer.eval()
    layer(torch.randn(3, 5)).sum().backward()
    assert stat.samples == 6


def test_apply_sets_the_top_directions_with_the_layers_row_norm():
    torch.manual_seed(0)
    layer = nn.Linear(4, 10)
    norm = layer.weight.norm(dim=1).mean()
    rest = layer.weight[2:].clone()
    stat = BottleneckStatistic(4, torch.device("cpu"))
    u = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    v = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=torch.float64)
    stat.m = 3 * u.T[:, :1] @ v[:1] + 1 * u.T[:, 1:] @ v[1:]  # rank 2
    stat.samples = 1
    assert stat.apply(layer) == 2
    torch.testing.assert_close(layer.weight[0].abs(), (v[0] * norm).float().abs())
    torch.testing.assert_close(layer.weight[1].abs(), (v[1] * norm).float().abs())
    torch.testing.assert_close(layer.weight[2:], rest)  # the other units keep their init
    assert BottleneckStatistic(4, torch.device("cpu")).apply(layer) == 0  # nothing seen


def test_a_germinated_seed_gathers_and_initialises_as_it_enters_training():
    x, y = _data()
    plain = wrap(_mlp(), ["0"], example_input=x)
    model = wrap(_mlp(), ["0"], example_input=x, config=KasminaConfig(seed_init="bottleneck"))
    losses = {}
    for name, m in (("plain", plain), ("bottleneck", model)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m.slots["0"].germinate(seed_for(m, "0"), step=0)
        losses[name] = _steps(m, opt, 3, x, y)
    # GERMINATED: the capture only observes; training is the same to the bit.
    assert losses["plain"] == losses["bottleneck"]
    slot = model.slots["0"]
    before = slot.seed.ops["fc1"].weight.detach().clone()
    with torch.no_grad():
        out_before = model(x)
    slot.advance(model.global_step)
    assert slot.stage == S.SEED_STAGE_TRAINING
    reason = model.transitions[-1].reason
    assert "entry units from the bottleneck of 48 samples" in reason
    after = slot.seed.ops["fc1"].weight.detach()
    rows = int(reason.split("; ")[1].split()[0])
    assert 0 < rows <= 8
    assert not torch.equal(after[:rows], before[:rows])
    torch.testing.assert_close(after[rows:], before[rows:])
    with torch.no_grad():  # TRAINING is isolated: the model's function is unchanged
        torch.testing.assert_close(model(x), out_before)
    assert slot.bottleneck is None and len(slot._handles) == 1  # the training hook only


def test_a_seed_that_does_not_qualify_initialises_as_its_blueprint_says():
    x, y = _data()
    model = wrap(_mlp(), ["0"], example_input=x, config=KasminaConfig(seed_init="bottleneck"))
    slot = model.slots["0"]
    slot.germinate(seed_for(model, "0", "BP-NORM-LAYER@1.0.0"), step=0)
    assert slot.bottleneck is None
    slot.advance(0)
    assert "bottleneck" not in model.transitions[-1].reason


def test_a_cull_while_germinated_drops_the_statistic():
    x, y = _data()
    model = wrap(_mlp(), ["0"], example_input=x, config=KasminaConfig(seed_init="bottleneck"))
    slot = model.slots["0"]
    slot.germinate(seed_for(model, "0"), step=0)
    assert slot.bottleneck is not None
    slot.cull(0)
    assert slot.bottleneck is None and slot._handles == []


@pytest.mark.parametrize("bad", ["", "zeros", "BOTTLENECK", None, 1])
def test_an_unknown_seed_init_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="seed_init"):
        KasminaConfig(seed_init=bad)
