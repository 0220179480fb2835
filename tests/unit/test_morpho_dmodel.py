"""The d_model-doubling probe (benchmarks/morpho/dmodel.py): the wider transformer computes
what the narrow one did, its copies are not tied, and Adam carries on over it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from morpho.dmodel import double_d_model  # noqa: E402
from morpho.text import SEQ_LEN, CharTransformer  # noqa: E402

VOCAB = 17


def _trained(d: int = 16) -> tuple[CharTransformer, torch.optim.Adam, torch.Tensor]:
    torch.manual_seed(0)
    model = CharTransformer(VOCAB, d).double()
    x = torch.randint(0, VOCAB, (3, SEQ_LEN))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):  # not at initialisation: trained weights and Adam moments
        optimizer.zero_grad()
        F.cross_entropy(model(x).flatten(0, -2), x.flatten()).backward()
        optimizer.step()
    return model, optimizer, x


@pytest.mark.parametrize("training", [True, False])
def test_doubling_keeps_the_function(training):
    model, optimizer, x = _trained()
    model.train(training)
    with torch.no_grad():
        before = model(x)
    new = double_d_model(model, optimizer, seed=1)
    with torch.no_grad():
        after = model(x)
    assert model.norm.normalized_shape == (32,)
    assert model.blocks[0].linear1.out_features == 64
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in CharTransformer(VOCAB, 32).parameters())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)
    # The new optimizer holds exactly the wider model's parameters, each with its moments.
    assert {id(p) for g in new.param_groups for p in g["params"]} == \
        {id(p) for p in model.parameters()}
    assert all(new.state[p]["exp_avg"].shape == p.shape for p in model.parameters())


def test_the_copies_get_different_gradients():
    model, optimizer, x = _trained()
    double_d_model(model, optimizer, seed=1)
    F.cross_entropy(model(x).flatten(0, -2), x.flatten()).backward()
    grad = model.embed.weight.grad  # (vocab, 2d): columns i and i + d are copies
    assert not torch.allclose(grad[:, :16], grad[:, 16:])


def test_noise_and_fresh_moments():
    model, optimizer, x = _trained()
    with torch.no_grad():
        before = model(x)
    new = double_d_model(model, optimizer, seed=1, fresh_moments=True, noise=0.5)
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after, before)  # the symmetry breaking moves the function
    state = new.state[model.head.weight]
    assert torch.count_nonzero(state["exp_avg"]) == 0 and state["step"] > 0
