"""wrap(): identity until a seed germinates, state_dict scheme, slot choice, unwrap."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.kasmina import wrap
from esper.kasmina.testing import force_advance, force_fossilize
from esper.leyline.v1.common_pb2 import SlotKind


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(5, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


CASES = [(mlp, (4, 6)), (cnn, (2, 1, 6, 6)), (TinyTransformer, (2, 7, 5))]


@pytest.mark.parametrize("make,shape", CASES)
def test_wrap_is_bit_identical_and_keeps_state_dict(make, shape):
    x = torch.randn(*shape)
    plain = make()
    model = wrap(make(), lambda name, module: True, example_input=x)
    assert len(model.slots) >= 3
    plain.train(), model.train()
    assert torch.equal(model(x), plain(x))
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    assert list(model.state_dict()) == list(plain.state_dict())
    model.load_state_dict(plain.state_dict())  # strict round trip
    model.train()
    model(x).sum().backward()
    plain.train()
    plain(x).sum().backward()
    for (n, p), q in zip(model.host.named_parameters(), plain.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_transformer_slots_follow_blocks_not_their_insides():
    model = wrap(TinyTransformer(), example_input=torch.randn(2, 7, 5))
    assert "encoder.layers.0" in model.slots
    assert not any(s.startswith("encoder.layers.0.") for s in model.slots)
    shape = model.slots["encoder.layers.0"].shape
    assert shape.kind == SlotKind.SLOT_KIND_SEQUENCE and shape.channels == 16 and shape.length == 7
    with pytest.raises(ValueError, match="fused block"):
        wrap(TinyTransformer(), ["encoder.layers.0.linear1"])


def test_slot_choice_by_names_and_predicate():
    assert list(wrap(mlp(), ["3"]).slots) == ["3"]
    only_linear = wrap(mlp(), lambda name, m: isinstance(m, nn.Linear))
    assert list(only_linear.slots) == ["0", "3"]
    with pytest.raises(ValueError, match="no such module"):
        wrap(mlp(), ["nope"])
    with pytest.raises(ValueError, match="cannot host"):
        wrap(mlp(), ["2"])


def test_shapes_inferred_for_cnn():
    model = wrap(cnn(), lambda name, module: True, example_input=torch.randn(2, 1, 6, 6))
    s = model.slots["0"].shape
    assert (s.kind, s.channels, s.height, s.width) == (SlotKind.SLOT_KIND_CONV2D, 4, 6, 6)
    assert model.slots["5"].shape.kind == SlotKind.SLOT_KIND_FEATURES


def test_seed_keys_under_documented_prefix_and_unwrap_is_plain():
    x = torch.randn(2, 7, 5)
    model = wrap(TinyTransformer(), example_input=x)
    slot = model.slots["encoder.layers.1"]
    slot.germinate(build_seed(get_builtin("BP-ATTN-MHA@1.0.0"), slot.shape), step=0)
    keys = [k for k in model.state_dict() if k.startswith("esper_slots.")]
    assert keys and all(k.startswith("esper_slots.encoder__layers__1.seed.") for k in keys)
    plain = model.unwrap()  # not fossilized: left out
    assert not any("esper" in type(m).__module__ for m in plain.modules())
    buf = io.BytesIO()
    torch.save(plain.state_dict(), buf)
    buf.seek(0)
    fresh = TinyTransformer()
    fresh.load_state_dict(torch.load(buf, weights_only=True))


def test_unwrap_fossil_in_transformer_matches():
    x = torch.randn(2, 7, 5)
    model = wrap(TinyTransformer(), example_input=x)
    slot = model.slots["encoder.layers.0"]
    seed = build_seed(get_builtin("BP-MLP-GELU@1.0.0"), slot.shape)
    with torch.no_grad():
        for p in seed.parameters():
            p.normal_(0, 0.1)
    force_fossilize(slot, seed)  # through the gates, with hand-set measurements
    model.eval()
    plain = model.unwrap().eval()
    assert not any("esper" in type(m).__module__ for m in plain.modules())
    torch.testing.assert_close(plain(x), model(x))


def test_model_graph_lists_nodes_edges_and_slots():
    model = wrap(cnn(), example_input=torch.randn(2, 1, 6, 6))
    g = model.model_graph()
    ids = [n.node_id for n in g.nodes]
    assert ids == ["0", "1", "2", "3", "4", "5"]
    assert len(g.edges) == 5 and {s.slot_id for s in g.slots} == set(model.slots)
    assert next(n for n in g.nodes if n.node_id == "0").slot_id == "0"


def test_unwrap_of_a_routed_fossil_traces_and_matches():
    """A mixture-of-experts fossil loops over its experts: unwrap() traces it with torch.fx
    (the loop bound is a plain int), so the plain model has torch classes only."""
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
                 example_input=torch.randn(2, 8))
    seed = build_seed(get_builtin("BP-MOE-TOP2"), model.slot("0").shape, seed=1)
    with torch.no_grad():
        for p in seed.parameters():
            p.add_(0.1)
    force_fossilize(model.slot("0"), seed)
    x = torch.randn(5, 8)
    plain = model.unwrap()
    assert not any(type(m).__module__.startswith("esper") for m in plain.modules())
    torch.testing.assert_close(plain(x), model(x))


def _ids(params):
    return [id(p) for p in params]


def test_parameter_list_follows_every_change_of_the_parameters():
    """parameter_list() is kept between changes: a germination adds the seed's, a merge
    into the host (fossilization) and a cull take them away, moving the model forgets it;
    after each it equals a fresh parameters() walk."""
    x = torch.randn(2, 7, 5)
    model = wrap(TinyTransformer(), example_input=x)
    assert _ids(model.parameter_list()) == _ids(model.parameters())
    assert model.parameter_list() is model.parameter_list()  # kept, not rebuilt
    host = len(model.parameter_list())
    a, b = model.slots["encoder.layers.0"], model.slots["encoder.layers.1"]
    a.germinate(build_seed(get_builtin("BP-MLP-GELU@1.0.0"), a.shape), step=0)
    assert len(model.parameter_list()) > host
    assert _ids(model.parameter_list()) == _ids(model.parameters())
    b.germinate(build_seed(get_builtin("BP-ATTN-MHA@1.0.0"), b.shape), step=0)
    b.cull(1, detail="test")
    assert _ids(model.parameter_list()) == _ids(model.parameters())
    force_advance(a, step=2)  # fossilized, merged or kept as a branch
    assert _ids(model.parameter_list()) == _ids(model.parameters())
    before = model.parameter_list()
    model.double()
    assert model.parameter_list() is not before
    assert _ids(model.parameter_list()) == _ids(model.parameters())
