"""Seeds on a causal sequence slot never look ahead: Kasmina marks the slots of a causal
model (SlotShape.causal, from a probe at wrap time), the builder makes attention causal
there, and a kernel built for a slot that may look ahead is rebuilt causal. (A
non-causal attention seed in a character-level language model read the next character:
98% test accuracy.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.blueprints.artifact import pack_kernel, sha256_hex
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import builtin_blueprints, get_builtin
from esper.blueprints.errors import BlueprintError
from esper.blueprints.graph import mixes_positions, resolve_for_shape
from esper.kasmina import wrap
from esper.kasmina.seeds import _from_kernel
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape

T, C, VOCAB = 12, 16, 20
ATTENTION = ("BP-ATTN-MHA@1.0.0", "BP-ATTN-GQA-ROPE@1.0.0")


class TinyLM(nn.Module):
    """Embeddings, one transformer block (causal unless told), a logits head."""

    def __init__(self, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.embed = nn.Embedding(VOCAB, C)
        self.block = nn.TransformerEncoderLayer(C, 4, 2 * C, dropout=0.0, batch_first=True)
        self.head = nn.Linear(C, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
        return self.head(self.block(self.embed(x), src_mask=mask))


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(0))


def _sequence_shape(causal: bool) -> SlotShape:
    return SlotShape(kind=SlotKind.SLOT_KIND_SEQUENCE, channels=C, length=T, causal=causal)


def _looks_ahead(seed: nn.Module) -> bool:
    """Whether the seed's output at earlier positions changes with the last position."""
    for p in seed.parameters():  # past the zero init, so the attention path shows
        nn.init.normal_(p, std=0.2)
    x = torch.randn(2, T, C)
    later = x.clone()
    later[:, -1] += torch.linspace(0.5, 1.5, C)  # uneven: a LayerNorm erases a constant
    with torch.no_grad():
        return not torch.allclose(seed(x)[:, :-1], seed(later)[:, :-1], atol=1e-6)


def test_wrap_marks_the_sequence_slots_of_a_causal_model_causal() -> None:
    torch.manual_seed(0)
    causal = wrap(TinyLM(causal=True), ["block"], example_input=_tokens())
    assert causal.slots["block"].shape.causal
    bidirectional = wrap(TinyLM(causal=False), ["block"], example_input=_tokens())
    assert not bidirectional.slots["block"].shape.causal
    # Nothing to probe with: the safe side.
    assert wrap(TinyLM(causal=False), ["block"]).slots["block"].shape.causal


def test_a_probe_that_cannot_change_the_last_token_leaves_the_slot_causal() -> None:
    same = torch.full((2, T), 3)  # one token value: nothing to swap it for
    assert wrap(TinyLM(causal=False), ["block"], example_input=same).slots["block"].shape.causal


@pytest.mark.parametrize("ref", ATTENTION)
def test_attention_seeds_are_causal_on_a_causal_slot(ref: str) -> None:
    spec = get_builtin(ref)
    assert mixes_positions(spec)
    torch.manual_seed(0)
    assert _looks_ahead(build_seed(spec, _sequence_shape(causal=False)))
    assert not _looks_ahead(build_seed(spec, _sequence_shape(causal=True)))


def test_a_seed_that_mixes_no_positions_is_built_the_same_on_a_causal_slot() -> None:
    for spec in builtin_blueprints():
        if bp.OP_TYPE_SELF_ATTENTION in {n.op for n in spec.graph.nodes}:
            continue
        if SlotKind.SLOT_KIND_SEQUENCE in spec.slot_kinds and not mixes_positions(spec):
            loose = resolve_for_shape(spec, _sequence_shape(causal=False))
            assert resolve_for_shape(spec, _sequence_shape(causal=True)) == loose, spec.name


def test_a_mean_over_every_token_is_refused_on_a_causal_slot() -> None:
    spec = bp.BlueprintSpec()
    spec.CopyFrom(get_builtin("BP-ATTN-MHA@1.0.0"))
    spec.graph.nodes.add(id="pool", op=bp.OP_TYPE_GLOBAL_AVG_POOL, inputs=["attn"])
    spec.graph.nodes.add(id="scaled", op=bp.OP_TYPE_MUL, inputs=["attn", "pool"])
    spec.graph.output = "scaled"
    resolve_for_shape(spec, _sequence_shape(causal=False))
    with pytest.raises(BlueprintError, match="look ahead"):
        resolve_for_shape(spec, _sequence_shape(causal=True))


@pytest.mark.parametrize("ref", ATTENTION)
def test_a_kernel_built_to_look_ahead_is_rebuilt_causal_for_a_causal_slot(ref: str) -> None:
    spec = get_builtin(ref)
    torch.manual_seed(0)
    loose = build_seed(spec, _sequence_shape(causal=False))
    data = pack_kernel(spec, _sequence_shape(causal=False), loose)
    seed = _from_kernel(spec, _sequence_shape(causal=True), data, sha256_hex(data), "cpu",
                        torch.float32)
    for name, tensor in seed.state_dict().items():  # the kernel's own weights
        torch.testing.assert_close(tensor, loose.state_dict()[name])
    assert not _looks_ahead(seed)
    # On a slot that may look ahead the kernel is used as it is.
    same = _from_kernel(spec, _sequence_shape(causal=False), data, sha256_hex(data), "cpu",
                        torch.float32)
    assert _looks_ahead(same)
