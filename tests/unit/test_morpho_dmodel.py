"""The d_model-doubling probe (benchmarks/morpho/dmodel.py): the wider transformer computes
what the narrow one did, its copies are not tied, and Adam carries on over it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from morpho.dmodel import double_d_model, grow_d_model  # noqa: E402
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


@pytest.mark.parametrize("training", [True, False])
def test_growing_by_k_features_keeps_the_function_twice(training):
    model, optimizer, x = _trained()
    model.train(training)
    with torch.no_grad():
        before = model(x)
    for width in (24, 32):  # 16 -> 24 -> 32, 8 features at a time
        optimizer = grow_d_model(model, optimizer, extra=8, seed=width)
        assert model.norm.normalized_shape == (width,)
        assert model.blocks[0].linear1.out_features == 2 * width
        assert model.blocks[0].self_attn.head_dim == width // 4
        with torch.no_grad():
            torch.testing.assert_close(model(x), before, rtol=0, atol=1e-12)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in model.parameters()}
    state = optimizer.state[model.head.weight]  # Adam's step count kept, moments fresh
    assert state["exp_avg"].shape == model.head.weight.shape
    assert state["step"] == 3 and torch.count_nonzero(state["exp_avg"]) == 0


def test_grown_features_learn_and_are_not_tied():
    model, optimizer, x = _trained()
    grow_d_model(model, optimizer, extra=8, seed=1)
    F.cross_entropy(model(x).flatten(0, -2), x.flatten()).backward()
    # The new stream features' writers, the new MLP units' output columns and the new
    # query dims all get a gradient (none is stuck at a saddle) ...
    assert torch.count_nonzero(model.embed.weight.grad[:, 16:]) > 0
    assert torch.count_nonzero(model.blocks[0].linear2.weight.grad[:, 32:]) > 0
    attn = model.blocks[0].self_attn
    new_q = torch.tensor([i % 6 >= 4 for i in range(24)])  # heads of 4 -> 6 dims
    assert torch.count_nonzero(attn.in_proj_weight.grad[:24][new_q]) > 0
    # ... and different ones: the new features, equal at growth, do not stay tied.
    grad = model.embed.weight.grad[:, 16:]
    assert not torch.allclose(grad[:, :1].expand_as(grad), grad)


def test_growth_must_be_a_multiple_of_the_heads():
    model, optimizer, _ = _trained()
    for extra in (0, 6, -4):
        with pytest.raises(ValueError, match="multiple of the 4 heads"):
            grow_d_model(model, optimizer, extra=extra)

