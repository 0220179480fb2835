"""Residual-stream growth (esper.kasmina.stream): a declared stream widens in place and
exactly, every new part learns, a bad declaration or an unsafe widening is refused with
the host untouched, and the decision path (Kasmina's applier, Tolaria's optimizer and
checkpoint) carries it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from esper.kasmina import DecisionApplier, ResidualStream, wrap
from esper.leyline.v1.control_pb2 import (
    AckStatus,
    AdaptationDecision,
    GerminateAction,
    WidenStreamAction,
)
from esper.tolaria import ReplayPolicy, TolariaConfig, attach
from esper.tolaria.checkpoint import load_checkpoint, restore_session, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SEQ, VOCAB = 6, 11


class Tiny(nn.Module):
    """A pre-norm transformer the way users write one: embeddings, blocks, a norm, a head."""

    def __init__(self, d: int = 8, heads: int = 2, layers: int = 2, declare: bool = True,
                 skip_norm: bool = False) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(SEQ, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)
        self.declare, self.skip_norm = declare, skip_norm

    def esper_residual_stream(self) -> ResidualStream:
        return ResidualStream(embeddings=("tok", "pos"),
                              blocks=tuple(f"blocks.{i}" for i in range(len(self.blocks))),
                              norms=("norm",), readers=("head",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        for block in self.blocks:
            h = block(h)
        return self.head(h if self.skip_norm else self.norm(h))


class Undeclared(Tiny):
    esper_residual_stream = None  # type: ignore[assignment]


def _x(n: int = 4) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(3))


def _wrapped(**kw):
    torch.manual_seed(0)
    host = Tiny(**kw).double()
    return host, wrap(host, example_input=_x(2))


@pytest.mark.parametrize("train", [True, False])
def test_widening_is_exact_and_ends_as_a_model_of_the_new_width(train: bool) -> None:
    host, morph = _wrapped()
    x = _x()
    host.train(train)
    before = morph(x)
    assert morph.stream_state().width == 8 and morph.stream_state().max_width == 12
    added = morph.widen_stream(2)
    added += morph.widen_stream(2)
    after = morph(x)
    assert (after - before).abs().max() < 1e-12
    assert morph.stream.width == 12 and [h["to"] for h in morph.stream.history] == [10, 12]
    assert added == sum(p.numel() for p in host.parameters()) - sum(
        p.numel() for p in Tiny(d=8).parameters())
    assert sum(p.numel() for p in host.parameters()) == sum(p.numel() for p in Tiny(d=12).parameters())
    assert host.blocks[0].self_attn.head_dim == 6 and host.norm.normalized_shape == (12,)
    assert all(s.shape.channels == 12 for s in morph.slots.values())


def test_every_new_part_learns_and_nothing_is_tied() -> None:
    host, morph = _wrapped()
    morph.widen_stream(2)
    F.cross_entropy(morph(_x()).flatten(0, 1), _x().flatten()).backward()
    attn, mlp = host.blocks[0].self_attn, host.blocks[0].linear2
    new_q = attn.in_proj_weight.grad[:10].view(2, 5, 10)[:, 4:]  # each head's new query dim
    assert new_q.abs().sum() > 0
    assert mlp.weight.grad[:, 16:].abs().sum() > 0  # the new hidden units' output columns
    assert host.head.weight.grad[:, 8:].abs().sum() > 0  # the head reads the new features
    grads = host.tok.weight.grad[:, 8:]
    assert not torch.allclose(grads[:, 0], grads[:, 1])  # the two new features differ


def test_refusals_name_the_reason_and_leave_the_host_untouched() -> None:
    host, morph = _wrapped()
    state = copy.deepcopy(host.state_dict())
    for features, words in ((3, "multiple of 2"), (0, "positive multiple"), (6, "above its limit 12")):
        with pytest.raises(ValueError, match=words):
            morph.widen_stream(features)
    # A reader that reads the stream without its norm: the output check refuses and rolls back.
    torch.manual_seed(0)
    bad = Tiny(skip_norm=True).double()
    bad_morph = wrap(bad, example_input=_x(2))
    bad_state = copy.deepcopy(bad.state_dict())
    with pytest.raises(ValueError, match="not function-preserving"):
        bad_morph.widen_stream(2)
    for src, ref in ((host, state), (bad, bad_state)):
        assert all(torch.equal(v, ref[k]) for k, v in src.state_dict().items())
    assert bad.norm.normalized_shape == (8,) and bad_morph.stream.width == 8
    with pytest.raises(ValueError, match="declares no residual stream"):
        wrap(Undeclared(), example_input=_x(2)).widen_stream(2)


@pytest.mark.parametrize("decl, words", [
    (ResidualStream(), "at least one block or norm"),
    (ResidualStream(norms=("head",)), "not an nn.LayerNorm"),
    (ResidualStream(norms=("nope",)), "no module 'nope'"),
    (ResidualStream(norms=("norm",), readers=("blocks.0.linear2",)), "disagree on its width"),
])
def test_bad_declarations_are_refused_at_wrap(decl, words) -> None:
    host = Tiny()
    host.esper_residual_stream = lambda: decl
    with pytest.raises(ValueError, match=words):
        wrap(host, example_input=_x(2))


def test_post_norm_blocks_are_refused() -> None:
    host = Tiny()
    host.blocks[0].norm_first = False
    with pytest.raises(ValueError, match="pre-norm"):
        wrap(host, example_input=_x(2))


def _decision(did: str, step: int = 0, **action) -> AdaptationDecision:
    return AdaptationDecision(decision_id=did, issued_at_step=step, expires_at_step=step + 100, **action)


def test_applier_widens_and_refuses_while_a_seed_grows_on_the_stream() -> None:
    _, morph = _wrapped()
    from esper.kasmina import BlueprintSeedBuilder

    applier = DecisionApplier(morph, BlueprintSeedBuilder())
    ack = applier.apply(_decision("w1", widen_stream=WidenStreamAction(features=2)))
    assert ack.status == AckStatus.ACK_STATUS_APPLIED and "8 -> 10" in ack.reason
    ack = applier.apply(_decision("w2", widen_stream=WidenStreamAction(features=5)))
    assert ack.status == AckStatus.ACK_STATUS_REJECTED and "features 5" in ack.reason
    morph.slot("norm").record.stage = 2  # a seed (as a stage) on the stream's norm
    morph.refresh_live()
    ack = applier.apply(_decision("w3", widen_stream=WidenStreamAction(features=2)))
    assert ack.status == AckStatus.ACK_STATUS_REJECTED and "live seeds" in ack.reason
    assert morph.stream.width == 10


def _train(session, model, optimizer, steps: int) -> list[float]:
    x = _x(8)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.flatten(0, 1), x.flatten())
        loss.backward()
        optimizer.step()
        session.step(loss, out, x)
        losses.append(loss.item())
    return losses


def _session(decisions):
    torch.manual_seed(0)
    host = Tiny()
    optimizer = torch.optim.Adam(host.parameters(), lr=1e-2)
    replay = ReplayPolicy(decisions)
    session = attach(host, optimizer, replay, example_input=_x(2),
                     config=TolariaConfig(run_id="stream-run", snapshot_every=2, progress=False))
    return host, optimizer, session, replay


def test_tolaria_moves_the_optimizer_to_the_widened_stream_and_keeps_training(tmp_path) -> None:
    host, optimizer, session, replay = _session([_decision("w", 3, widen_stream=WidenStreamAction(features=2))])
    old = host.tok.weight
    losses = _train(session, host, optimizer, 4)
    assert replay.acks["w"].status == AckStatus.ACK_STATUS_APPLIED
    new = host.tok.weight
    assert new is not old and new.shape == (VOCAB, 10)
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(new) in params and id(old) not in params and old not in optimizer.state
    state = optimizer.state[new]
    assert int(state["step"]) == 4 and state["exp_avg"].shape == new.shape  # the step count carried over
    snap = session._snapshot(epoch_end=False)
    assert snap.stream.width == 10 and snap.stream.widenings == 1 and snap.stream.params_added > 0
    assert snap.resources.total_params == sum(p.numel() for p in host.parameters())
    summary = session.summary()
    assert summary["stream_widenings"][0]["to"] == 10
    assert "residual stream widened 8 -> 10 at step 4" in str(summary)
    losses += _train(session, host, optimizer, 20)
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
    # A checkpoint of the widened run resumes into a freshly attached (narrow) model.
    path = save_checkpoint(tmp_path / "ck.pt", session)
    host2, optimizer2, session2, _ = _session([])
    restore_session(session2, load_checkpoint(path))
    assert session2.model.stream.width == 10 and session2.model.stream.widenings == 1
    assert all(torch.equal(a, b) for a, b in zip(host.state_dict().values(), host2.state_dict().values()))
    x = _x()
    assert torch.equal(host.eval()(x), host2.eval()(x))


def test_a_germination_after_a_widening_uses_the_slots_new_width() -> None:
    _, optimizer, session, replay = _session([_decision("w", 1, widen_stream=WidenStreamAction(features=2))])
    _train(session, session.model, optimizer, 2)
    shape = session.model.slot("norm").shape
    assert shape.channels == 10
    cand = session.local_kernels.find("BP-IA3@1.0.0", shape)
    replay.log.append(_decision("g", 2, germinate=GerminateAction(
        slot_id="norm", blueprint_ref="BP-IA3@1.0.0", kernel_id=cand.kernel.kernel_id,
        kernel_sha256=cand.kernel.sha256)))
    _train(session, session.model, optimizer, 2)
    assert replay.acks["g"].status == AckStatus.ACK_STATUS_APPLIED, replay.acks["g"].reason
    ack = session.applier.apply(_decision("w2", widen_stream=WidenStreamAction(features=2)))
    assert ack.status == AckStatus.ACK_STATUS_REJECTED  # a seed sized to the stream is on it


def test_the_stream_widens_beside_the_seeds_room_not_inside_it() -> None:
    """The budget a session sends its policy is the seeds' room plus all the declared stream
    may add up to its limit: widened to its limit, the stream leaves the seeds their whole
    room (counted against the room alone, the char host's default widenings left no room
    for any seed but a norm)."""
    from esper.policy.budget import params_left
    from esper.policy.context import PolicyContext

    host, _, session, _ = _session([])
    try:
        stream = session.model.stream
        host_params = sum(p.numel() for p in host.parameters())
        allowance = stream.growth_params()
        assert allowance > 0
        room = int(session.model.cfg.max_seed_param_fraction * host_params)
        assert session.open_message.budget.max_added_params == room + allowance
        session.model.widen_stream(2)
        assert stream.growth_params() == allowance  # widened part-way: the same total
        session.model.widen_stream(stream.max_width - stream.width)
        assert stream.params_added == allowance == stream.growth_params()
        ctx = PolicyContext.build(session._snapshot(epoch_end=False), session.model.model_graph(),
                                  budget=session.budget)
        assert params_left(ctx) == room
    finally:
        session.close()


def test_kasmina_counts_the_seeds_room_against_the_host_at_its_declared_width() -> None:
    """The same rule as the policy's budget: a widened stream does not enlarge the seeds'
    room, so a seed that fits a share of the widened host but not of the declared one is
    refused by Kasmina itself, naming the rule."""
    import dataclasses

    from esper.kasmina import BlueprintSeedBuilder

    def germinate(morph, did: str):
        return DecisionApplier(morph, BlueprintSeedBuilder()).apply(_decision(did, germinate=GerminateAction(
            slot_id="norm", blueprint_ref="BP-IA3@1.0.0")))

    _, morph = _wrapped()
    declared = morph.declared_host_params()
    assert declared == morph.host_param_count()
    morph.widen_stream(morph.stream.max_width - morph.stream.width)
    assert morph.declared_host_params() == declared < morph.host_param_count()
    trial = copy.deepcopy(morph)
    trial.cfg = dataclasses.replace(trial.cfg, max_seed_param_fraction=100.0)
    assert germinate(trial, "trial").status == AckStatus.ACK_STATUS_APPLIED
    size = trial.seed_param_count()
    # room for the seed against the widened host, not against the declared one
    morph.cfg = dataclasses.replace(morph.cfg, max_seed_param_fraction=(size + 1) / morph.host_param_count())
    ack = germinate(morph, "g")
    assert ack.status == AckStatus.ACK_STATUS_REJECTED and "at its declared stream width" in ack.reason
    assert f"of the host's {declared} parameters" in ack.reason
    morph.cfg = dataclasses.replace(morph.cfg, max_seed_param_fraction=(size + 0.5) / declared)
    assert germinate(morph, "g2").status == AckStatus.ACK_STATUS_APPLIED

