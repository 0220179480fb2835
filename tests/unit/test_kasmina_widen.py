"""Width growth (esper.kasmina.widen): which layers can widen, a widening through the real
decision path is function-preserving, learns, fossilizes, and unwraps into wider layers."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper.tolaria
from esper.kasmina import wrap
from esper.kasmina.testing import force_advance
from esper.kasmina.widen import widened_copy
from esper.leyline.v1.control_pb2 import AckStatus, AdaptationDecision, GerminateAction
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.tolaria import TolariaConfig

WIDEN = "BP-WIDEN-HALF@1.0.0"


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 8), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(torch.relu(self.fc1(x.flatten(1))))))


class CNN(nn.Module):
    """conv -> relu -> maxpool -> conv -> relu -> avgpool -> flatten -> fc: widening conv2
    feeds 4 features per new channel into fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class Normed(nn.Module):
    """A LayerNorm between the layers mixes channels: fc1 cannot widen."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def _session(host, x):
    opt = torch.optim.Adam(host.parameters(), lr=1e-2)
    # Width growth is opt-in: named in `blueprints=` (OPT_IN_FAMILIES)
    session = esper.tolaria.attach(host, opt, policy="none", example_input=x[:2],
                                   blueprints=[WIDEN, "BP-MLP-GELU@1.0.0"],
                                   config=TolariaConfig(run_id="widen-1", progress=False))
    return session, opt


def _germinate(session, slot_id: str):
    shape = session.model.slot(slot_id).shape
    cand = session.local_kernels.find(WIDEN, shape)
    return session.applier.apply(AdaptationDecision(
        decision_id=f"d-{slot_id}", run_id="widen-1", germinate=GerminateAction(
            slot_id=slot_id, blueprint_ref=WIDEN, kernel_id=cand.kernel.kernel_id,
            kernel_sha256=cand.kernel.sha256)))


def test_sites_sizes_and_no_default_slot_on_the_logits():
    model = wrap(MLP(), example_input=torch.randn(2, 12))
    assert sorted(model.slots) == ["fc1", "fc2"]  # fc3 computes the logits
    assert model.slot("fc1").shape.widen_params_per_unit == 12 + 1 + 6
    assert model.slot("fc2").shape.widen_params_per_unit == 8 + 1 + 3
    cnn = wrap(CNN(), example_input=torch.randn(2, 1, 8, 8))
    assert cnn.slot("conv1").shape.widen_params_per_unit == 9 + 1 + 6 * 9
    assert cnn.slot("conv2").shape.widen_params_per_unit == 4 * 9 + 1 + 4 * 3
    normed = wrap(Normed(), example_input=torch.randn(2, 5))
    assert normed.slot("fc1").shape.widen_params_per_unit == 0
    assert wrap(MLP()).slot("fc1").shape.widen_params_per_unit == 0  # nothing to probe with


@pytest.mark.parametrize("make,x_shape,slots", [
    (MLP, (16, 12), ["fc1", "fc2"]),
    (CNN, (16, 1, 8, 8), ["conv1", "conv2"]),
])
def test_widening_preserves_learns_fossilizes_and_unwraps_into_wider_layers(make, x_shape, slots):
    torch.manual_seed(0)
    x, y = torch.randn(*x_shape), torch.randint(0, 3, (x_shape[0],))
    session, opt = _session(make(), x)
    model = session.model
    rng_before = torch.get_rng_state()
    for slot_id in slots:
        before = model(x).detach()
        ack = _germinate(session, slot_id)
        assert ack.status == AckStatus.ACK_STATUS_APPLIED, ack.reason
        slot = model.slot(slot_id)
        assert torch.equal(model(x), before)  # function-preserving
        force_advance(slot, step=0, until=SeedStage.SEED_STAGE_TRAINING)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        assert slot.seed.project.weight.abs().sum() > 0  # the seed learned
        force_advance(slot, step=0)
        assert slot.stage == SeedStage.SEED_STAGE_FOSSILIZED
    assert torch.equal(torch.get_rng_state(), rng_before)  # germination drew no training RNG
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = model.unwrap()
    assert not any("esper" in type(m).__module__ for m in plain.modules())
    torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)
    first = plain.get_submodule(slots[0])
    assert first.weight.shape[0] == model.host.get_submodule(slots[0]).weight.shape[0] * 3 // 2


def test_a_slot_that_cannot_widen_refuses_the_decision_and_training_goes_on():
    x = torch.randn(8, 5)
    session, _ = _session(Normed(), x)
    shape = session.model.slot("fc1").shape
    with pytest.raises(KeyError):  # no kernel is offered for it
        session.local_kernels.find(WIDEN, shape)
    assert session.model(x).shape == (8, 2)


def test_widened_copy_is_the_final_architecture():
    host = MLP()
    wide = widened_copy(host, "fc1", "fc2", 4)
    assert wide.fc1.weight.shape == (12, 12) and wide.fc2.weight.shape == (6, 12)
    assert wide(torch.randn(3, 12)).shape == (3, 3)
    cnn = widened_copy(CNN(), "conv2", "fc", 2)
    assert cnn.conv2.weight.shape[0] == 8 and cnn.fc.weight.shape[1] == 8 * 4
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_width_growth_is_opt_in() -> None:
    x = torch.randn(4, 12)
    session = esper.tolaria.attach(MLP(), torch.optim.SGD(MLP().parameters(), lr=0.1),
                                   policy="none", example_input=x,
                                   config=TolariaConfig(run_id="widen-2", progress=False))
    shape = session.model.slot("fc1").shape
    assert shape.widen_params_per_unit > 0  # the layer could widen...
    offered = {c.kernel.blueprint_ref for c in session.local_kernels.kernels_for(shape)}
    assert WIDEN not in offered and "BP-MLP-GELU@1.0.0" in offered  # ...but only when asked
