"""GnnPolicy: shapes, the safety mask, fallback, artifacts, hostile inputs."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from esper.leyline.lifecycle import next_stage
from esper.leyline.v1.control_pb2 import AdvanceAction, CullAction, FossilizeAction, GerminateAction
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.signals_pb2 import ResidualStreamState, TrainingMetrics
from esper.policy import NoCandidateProvider
from esper.policy import budget as budgeting
from esper.policy.decisions import make_decision
from esper.policy.health import health_score
from esper.policy.heuristic import HEALTH_WEIGHT, HeuristicConfig, HeuristicPolicy, benefit_per_cost
from esper.policy.safety import ADVANCEABLE_STAGES, live_seed_limit, violation
from esper.tamiyo.policies.artifact import (
    PolicyArtifactError,
    load_policy,
    save_policy,
    tensors_digest,
)
from esper.tamiyo.policies.features import (
    CANDIDATE_FEATURES,
    FEATURE_SCHEMA,
    NODE_FEATURES,
    encode_graph,
)
from esper.tamiyo.policies.gnn import GnnConfig, GnnPolicy
from esper.tamiyo.policies.mask import ACTIONS, GERMINATE
from esper.tamiyo.policies.network import (
    DropoutBank,
    NetworkShape,
    PolicyNet,
    _BatchAdjacencies,
    block_diagonal,
    propagate,
    tile,
)
from esper.tamiyo.policies.vocabulary import BlueprintVocabulary
from tests.unit.test_tamiyo_support import candidate, context, graph, health, seed, snapshot

S = SeedStage
VOCAB = BlueprintVocabulary(("BP-LORA@1.0.0", "BP-MLP-GELU@1.0.0", "BP-MOE@1.0.0"))
ALWAYS = GnnConfig(min_confidence=0.0, max_uncertainty=float("inf"))
CANDIDATES = [candidate("BP-LORA", params=500), candidate("BP-MLP-GELU", params=3000, gain=0.05),
              candidate("BP-MOE", params=200, risk=0.9), candidate("BP-UNKNOWN", params=10)]


def test_forward_shapes() -> None:
    net = PolicyNet(NetworkShape(vocabulary=len(VOCAB))).eval()
    enc = encode_graph(graph(7))
    x, g = torch.randn(1, 7, NODE_FEATURES), torch.randn(1, net.shape.global_features)
    with torch.inference_mode():
        a, s, b, v = net(x, enc.adjacency, g, torch.Generator().manual_seed(1), passes=5)
    assert a.shape == (5, len(ACTIONS)) and s.shape == (5, 7, 4) and b.shape == (5, 7, 3) and v.shape == (5,)
    assert a.std(0).sum() > 0  # the passes differ: MC-dropout is on
    with torch.inference_mode():
        a1 = net(x, enc.adjacency, g)[0]
    assert a1.shape == (1, len(ACTIONS))


def test_sparse_propagation_equals_gcnconv() -> None:
    net = PolicyNet(NetworkShape(vocabulary=2))
    enc = encode_graph(graph(9))
    h = torch.randn(3, 9, net.shape.hidden)
    conv = net.convs[0]
    with torch.no_grad():
        assert torch.allclose(propagate(conv, h, enc.adjacency), conv(h, enc.edge_index, enc.edge_weight), atol=1e-5)


def _random_context(rng: random.Random, g=None):
    """Random seeds, candidates and limits, on a random graph unless `g` is given."""
    if g is None:
        g = graph(rng.randint(1, 12), slot_every=rng.randint(1, 3))
    stages = [s for s in S.values() if s != S.SEED_STAGE_UNSPECIFIED]
    seeds = [
        seed(slot.slot_id, rng.choice(stages), steps=rng.randint(0, 300), alpha=rng.random(),
             params=rng.randint(0, 5000), val_start=1.0, val_now=rng.uniform(0.8, 1.3),
             embargo_until=rng.choice([0, 0, 5000]))
        for slot in g.slots if rng.random() < 0.7
    ]
    cands = rng.sample(CANDIDATES, rng.randint(0, len(CANDIDATES)))
    return context(g=g, seeds=seeds, candidates=cands, max_live=rng.randint(0, 3),
                   max_params=rng.choice([0, 600, 4000, 20_000]), max_risk=rng.choice([0.0, 0.3, 1.0]),
                   layers=[health(s.slot_id, dead=rng.random()) for s in g.slots])


def _randomise(net: PolicyNet, rng: random.Random) -> None:
    torch.manual_seed(rng.randint(0, 10**6))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 1.0)


def _decision_for(mask, ctx, enc, action: int, node: int, bp: int | None):
    slot_id = next(s for s, i in enc.slot_node.items() if i == node)
    stage = ctx.stage_of(slot_id)
    if ACTIONS[action] == "germinate":
        k = mask.kernels[(node, bp)]
        act = GerminateAction(slot_id=slot_id, blueprint_ref=VOCAB.refs[bp], kernel_id=k.kernel.kernel_id,
                              kernel_sha256=k.kernel.sha256)
    elif ACTIONS[action] == "advance":
        act = AdvanceAction(slot_id=slot_id, target_stage=next_stage(stage))
    elif ACTIONS[action] == "cull":
        act = CullAction(slot_id=slot_id, reason=1)
    else:
        act = FossilizeAction(slot_id=slot_id)
    return make_decision(ctx, act, policy_version="t", horizon_steps=1, confidence=1, rationale="")


def test_mask_never_lets_an_illegal_action_through() -> None:
    rng = random.Random(1234)
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB, heuristic=HeuristicPolicy(HeuristicConfig(max_live_seeds=0)))
    checked = {name: 0 for name in ACTIONS}
    for _ in range(100):
        ctx = _random_context(rng)
        _randomise(policy.net, rng)
        risk = budgeting.max_risk(ctx, policy.heuristic.config.max_risk)
        max_live = live_seed_limit(ctx, policy.heuristic.config.max_live_seeds)
        decision = policy.decide(ctx)
        assert violation(decision, ctx, risk, max_live) is None
        assert "safety check refused" not in decision.rationale
        checked[decision.WhichOneof("action")] += 1
        enc = policy.encoding(ctx)
        mask = policy.mask(ctx, enc)
        for a in range(4):
            for node in mask.slots[a].nonzero()[0]:
                bps = mask.blueprints[node].nonzero()[0] if a == GERMINATE else [None]
                for bp in bps:
                    d = _decision_for(mask, ctx, enc, a, int(node), None if bp is None else int(bp))
                    assert violation(d, ctx, risk, max_live) is None, (ACTIONS[a], d)
        # And every slot the mask forbids is really forbidden for advance.
        for slot_id, node in enc.slot_node.items():
            if not mask.slots[1][node]:
                assert ctx.stage_of(slot_id) not in ADVANCEABLE_STAGES
    assert all(checked[a] for a in ("germinate", "advance", "cull", "wait")), checked


def test_low_confidence_falls_back_to_heuristic() -> None:
    policy = GnnPolicy(config=GnnConfig(min_confidence=0.999), vocabulary=VOCAB)
    d = policy.decide(context(candidates=CANDIDATES))
    assert "fell back to the heuristic" in d.rationale and "low confidence" in d.rationale
    assert d.policy_version == "heuristic@1.0.0"
    assert d.WhichOneof("action") == "germinate"  # the heuristic's plateau decision


def test_the_stream_widens_by_the_heuristics_rule_before_the_network_decides() -> None:
    """The network has no widening action: a declared stream grows by the heuristic's rule
    (here on a plateau), whatever the network would have chosen; at its limit the network
    decides again."""
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    ctx = context(candidates=CANDIDATES)
    ctx.snapshot.stream.CopyFrom(ResidualStreamState(width=32, declared_width=32, max_width=48,
                                                     feature_multiple=4, params_per_feature=100))
    d = policy.decide(ctx)
    assert d.WhichOneof("action") == "widen_stream" and d.widen_stream.features == 8
    assert "widens by the heuristic's stream rule" in d.rationale and "plateaued" in d.rationale
    ctx.snapshot.stream.width = 48
    d = policy.decide(ctx)
    assert d.WhichOneof("action") != "widen_stream" and "stream rule" not in d.rationale


def test_no_library_means_no_germinate() -> None:
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    for _ in range(5):
        _randomise(policy.net, random.Random(_))
        d = policy.decide(context(provider=NoCandidateProvider("Urza unreachable")))
        assert d.WhichOneof("action") != "germinate"


def test_decisions_replay_with_the_same_seed() -> None:
    ctx = context(candidates=CANDIDATES)
    a, b = GnnPolicy(config=ALWAYS, vocabulary=VOCAB), GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    for _ in range(3):
        da, db = a.decide(ctx), b.decide(ctx)
        assert (da.WhichOneof("action"), da.confidence, da.uncertainty) == (db.WhichOneof("action"), db.confidence, db.uncertainty)


def test_save_load_round_trip(tmp_path) -> None:
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    _randomise(policy.net, random.Random(7))
    path = tmp_path / "policy.safetensors"
    digest = save_policy(path, policy.net, VOCAB, "gnn@3")
    loaded = load_policy(path, expected_sha256=digest, expected_vocabulary=VOCAB)
    assert loaded.version == "gnn@3" and loaded.vocabulary == VOCAB and loaded.sha256 == digest
    for k, v in policy.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k])
    again = GnnPolicy(loaded, config=ALWAYS)
    ctx = context(candidates=CANDIDATES)
    fresh = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    fresh.net.load_state_dict(policy.net.state_dict())
    d1, d2 = fresh.decide(ctx), again.decide(ctx)
    assert d1.WhichOneof("action") == d2.WhichOneof("action") and d1.confidence == pytest.approx(d2.confidence)
    assert d2.policy_version == "gnn@3"


def test_load_refuses_tampered_and_mismatched_files(tmp_path) -> None:
    policy = GnnPolicy(vocabulary=VOCAB)
    path = tmp_path / "p.safetensors"
    digest = save_policy(path, policy.net, VOCAB, "gnn@1")
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip a byte of tensor data
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(raw))
    with pytest.raises(PolicyArtifactError, match="tampered"):
        load_policy(tampered)
    with pytest.raises(PolicyArtifactError, match="digest"):
        load_policy(path, expected_sha256="0" * 64)
    with pytest.raises(PolicyArtifactError, match="vocabulary"):
        load_policy(path, expected_vocabulary=BlueprintVocabulary(("BP-OTHER@1.0.0",) * 1))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3 + b"not a safetensors file")
    with pytest.raises(PolicyArtifactError):
        load_policy(garbage)
    with pytest.raises(PolicyArtifactError):
        load_policy(tmp_path / "missing.safetensors")
    # Consistent digest but tensors of another architecture than the metadata says.
    small = PolicyNet(NetworkShape(vocabulary=len(VOCAB), hidden=8))
    tensors = {k: v.contiguous() for k, v in small.state_dict().items()}
    meta = {"format": "esper-tamiyo-gnn", "format_version": "1", "policy_version": "gnn@x",
            "feature_schema": FEATURE_SCHEMA, "vocabulary": json.dumps(list(VOCAB.refs)),
            "vocabulary_version": VOCAB.version, "tensors_sha256": tensors_digest(tensors),
            "architecture": json.dumps(NetworkShape(vocabulary=len(VOCAB)).as_dict())}
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(tensors, str(mismatched), metadata=meta)
    with pytest.raises(PolicyArtifactError, match="shapes"):
        load_policy(mismatched)
    assert digest


def test_hostile_inputs_do_not_raise() -> None:
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    nan = float("nan")
    ctx = context(candidates=CANDIDATES, seeds=[seed("ghost", S.SEED_STAGE_TRAINING),
                                                seed("s1", S.SEED_STAGE_BLENDING, val_start=nan, val_now=nan)],
                  layers=[health("s0", dead=nan, grad=float("inf")), health("nowhere")])
    ctx.snapshot.metrics.CopyFrom(TrainingMetrics(train_loss=nan, val_loss=float("inf"), learning_rate=-1.0))
    assert ctx.ignored_slot_ids == ("ghost",)
    assert policy.decide(ctx).WhichOneof("action")
    empty = context(g=graph(0))
    assert "empty model graph" in policy.decide(empty).rationale
    big = GnnPolicy(config=GnnConfig(max_nodes=10), vocabulary=VOCAB)
    d = big.decide(context(g=graph(11)))
    assert "nodes > 10" in d.rationale
    # A graph whose edges and slots name nodes that do not exist.
    g = graph(3)
    g.edges.add(source="n0", target="nope")
    g.slots.add(slot_id="dangling", node_id="nope")
    assert policy.decide(context(g=g, candidates=CANDIDATES)).WhichOneof("action")


def test_default_vocabulary_covers_the_builtin_catalogue() -> None:
    from esper.blueprints import builtin_blueprints
    from esper.tamiyo.policies.vocabulary import default_vocabulary

    vocab = default_vocabulary()
    builtin = {f"{b.name}@{b.version}" for b in builtin_blueprints()}
    assert builtin <= set(vocab.refs), sorted(builtin - set(vocab.refs))
    assert vocab.version == default_vocabulary().version


def _without_identity(decision):
    """A decision's content: its id and wall-clock issue time are new on every call."""
    content = type(decision)()
    content.CopyFrom(decision)
    content.ClearField("decision_id")
    content.ClearField("issued_at")
    return content


@pytest.mark.parametrize("config", [ALWAYS, GnnConfig()], ids=["gnn-always", "default-thresholds"])
def test_batched_decisions_are_exactly_the_unbatched_ones(config) -> None:
    """decide_batch (one forward over several runs' graphs, as Tamiyo batches sessions)
    decides exactly as decide does for each run in turn: action, slot, blueprint, kernel,
    confidence and MC-dropout spread to the last bit, fallbacks included."""
    rng = random.Random(2024)
    contexts = [_random_context(rng) for _ in range(30)]
    contexts += [context(g=graph(100, slot_every=4), candidates=CANDIDATES), context(g=graph(1), candidates=CANDIDATES)]
    rng.shuffle(contexts)
    alone, batched = (GnnPolicy(config=config, vocabulary=VOCAB) for _ in range(2))
    for policy in (alone, batched):
        _randomise(policy.net, random.Random(5))
    expected = [alone.decide(ctx) for ctx in contexts]
    got = [*batched.decide_batch(contexts[:13]), *batched.decide_batch(contexts[13:14]),
           *batched.decide_batch(contexts[14:])]
    assert len({d.WhichOneof("action") for d in expected}) > 1  # the batch mixes decisions
    for e, g in zip(expected, got, strict=True):
        assert _without_identity(g) == _without_identity(e)


@pytest.mark.parametrize("config", [ALWAYS, GnnConfig()], ids=["gnn-always", "default-thresholds"])
def test_runs_of_one_model_decide_together_exactly_as_alone(config) -> None:
    """Sessions of one model, each run with its own seeds and its own copy of the graph,
    decide together as they would alone: their graphs share an encoding (the batch's
    adjacency is built once and reused), their slots are chosen together (one graph size),
    among runs of other models; the same batch twice decides the same."""
    rng = random.Random(11)
    model = graph(12, slot_every=2)
    contexts = [_random_context(rng, type(model).FromString(model.SerializeToString())) for _ in range(12)]
    contexts += [_random_context(rng) for _ in range(6)]
    rng.shuffle(contexts)
    alone, batched = (GnnPolicy(config=config, vocabulary=VOCAB) for _ in range(2))
    for policy in (alone, batched):
        _randomise(policy.net, random.Random(4))
    expected = [_without_identity(alone.decide(ctx)) for ctx in contexts]
    for _ in range(2):
        assert [_without_identity(d) for d in batched.decide_batch(contexts)] == expected
    one_model = {d.WhichOneof("action") for d, ctx in zip(expected, contexts) if ctx.graph == model}
    assert len(one_model - {"wait"}) > 1  # several slot actions among the runs of one model


def test_batched_inference_computes_the_trained_forward() -> None:
    """PolicyNet.infer (what decisions use) is `forward` (what Simic trains), graph by graph:
    the action logits, every node's slot and blueprint logits, and the parts a decision asks
    for (one slot action's column, one node's blueprints)."""
    net = PolicyNet(NetworkShape(vocabulary=len(VOCAB))).eval()
    graphs = [(torch.randn(n, NODE_FEATURES), encode_graph(graph(n)).adjacency) for n in (7, 1, 30)]
    g = torch.randn(len(graphs), net.shape.global_features)
    with torch.inference_mode():
        keeps = net.dropout_keeps([len(x) for x, _ in graphs], torch.Generator().manual_seed(1), passes=5)
        batched = net.infer(tile([x for x, _ in graphs])[0], [adjacency for _, adjacency in graphs], g, keeps)
        generator = torch.Generator().manual_seed(1)
        for i, (x, adjacency) in enumerate(graphs):
            candidates = torch.randn(len(x), len(VOCAB), CANDIDATE_FEATURES)
            actions, slots, blueprints = net(x.unsqueeze(0), adjacency, g[i : i + 1], generator, passes=5,
                                             candidates=candidates.unsqueeze(0))[:3]
            out = batched[i]
            for got, expected in zip((out.actions, *out.node_logits(candidates)), (actions, slots, blueprints),
                                     strict=True):
                assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
            for a in range(slots.shape[-1]):
                assert torch.allclose(out.slot_logits(a, candidates), slots[..., a], atol=1e-5)
            for node in range(len(x)):
                assert torch.allclose(out.blueprint_logits(node, candidates[node]), blueprints[:, node], atol=1e-5)
            assert not torch.allclose(out.blueprint_logits(0), blueprints[:, 0])  # the candidates count


def test_batch_adjacencies_are_kept_per_batch_of_encodings_and_bounded() -> None:
    """A batch of the same encodings, in the same order, gets the block-diagonal adjacency
    built for it before; another order is another batch; the kept entries stay within the
    bound, least recently used out first."""
    a, b = (encode_graph(graph(n)).adjacency for n in (5, 9))
    size = block_diagonal([a, b]).values().numel()
    kept = _BatchAdjacencies(max_entries=2 * size)
    first = kept.get([a, b])
    assert kept.get([a, b]) is first and kept.get([b, a]) is not first
    assert torch.equal(kept.get([b, a]).to_dense(), block_diagonal([b, a]).to_dense())
    kept.get([a, b, a])  # over the bound: the least recently used goes
    assert kept.get([a, b]) is not first and kept._entries <= 2 * size


def test_dropout_masks_are_a_function_of_the_seed_and_graph_size() -> None:
    """A decision's MC-dropout masks do not depend on what was decided before it (replay
    across replicas and session interleavings): the same graph size gets the same masks
    whatever sizes came first, another seed other masks."""
    first, second = DropoutBank(8, 32, 0.1, seed=0), DropoutBank(8, 32, 0.1, seed=0)
    first.keeps([5]), first.keeps([300])  # grown in another order
    a, b = first.keeps([200])[0], second.keeps([200])[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = DropoutBank(8, 32, 0.1, seed=1).keeps([200])[0]
    assert not torch.equal(a[0], other[0])
    dropped = (a[0] == 0).float().mean().item()
    assert 0.08 < dropped < 0.12 and a[0].unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    ctx, other_ctx = context(candidates=CANDIDATES), context(g=graph(40), candidates=CANDIDATES)
    alone = policy.decide(ctx)
    policy.decide(other_ctx)
    again = policy.decide(ctx)
    assert _without_identity(alone) == _without_identity(again)


PLATEAU_3 = HeuristicPolicy(HeuristicConfig(plateau_patience=3, plateau_min_delta=0.01))


def test_the_global_pace_feature_says_how_much_learning_has_slowed() -> None:
    from esper.tamiyo.policies.features import PACE_FEATURE, global_features

    def pace_feature(history) -> float:
        return float(global_features(context(val_history=history), PLATEAU_3)[PACE_FEATURE])

    assert pace_feature([1.0, 0.8, 0.75]) == pytest.approx(0.25)
    assert pace_feature([1.0, 0.8]) == 1.0  # no history to judge by: as fast as ever
    assert pace_feature([1.0, 0.8, 0.9]) == 0.0


def test_the_global_features_read_losses_on_one_scale_across_tasks() -> None:
    """A character model's losses (~2.3) and a digits model's (~0.2) at the same point of
    their runs give the same global features: the losses enter as ratios."""
    from esper.policy.context import PolicyContext, RunHistory
    from esper.tamiyo.policies.features import global_features

    def features(scale: float) -> np.ndarray:
        snap = snapshot(val_loss=0.6 * scale)
        snap.metrics.train_loss, snap.metrics.best_val_loss = 0.5 * scale, 0.55 * scale
        snap.metrics.val_accuracy = 0.9 if scale == 1 else 0.35  # accuracies are task-specific
        ctx = PolicyContext.build(snap, graph(), history=RunHistory(
            val_losses=[v * scale for v in (1.2, 0.8, 0.6)]))
        return global_features(ctx, PLATEAU_3)

    digits, chars = features(1.0), features(11.5)
    np.testing.assert_allclose(digits, chars, rtol=1e-5)
    assert digits[:3] == pytest.approx([0.5 / 0.6, 0.6 / 1.2, 0.6 / 0.55 - 1], rel=1e-5)
    # Unknown (NaN, zero) losses read as "no gap, no progress, at its best".
    empty = snapshot(val_loss=float("nan"))
    row = global_features(PolicyContext.build(empty, graph(), history=RunHistory()), PLATEAU_3)
    assert row[:3].tolist() == [1.0, 1.0, 0.0]


def test_the_growth_signal_feature_follows_the_rules_of_the_heuristic_given() -> None:
    """The feature is 1 exactly when the given heuristic's seeds have a growth signal: a
    plateau for any, diminishing returns for one with the slowdown rule, the first epoch's
    pace only for one that reads it."""
    from esper.policy.context import PolicyContext, RunHistory
    from esper.tamiyo.policies.features import SIGNAL_FEATURE, global_features

    plateau_only = HeuristicPolicy(HeuristicConfig(plateau_patience=2, plateau_min_delta=0.01))
    slowdown = HeuristicPolicy(HeuristicConfig(plateau_patience=2, plateau_min_delta=0.01,
                                               slowdown_ratio=0.5, slowdown_window=1))
    first_epoch = HeuristicPolicy(dataclasses.replace(slowdown.config, seed_first_epoch_pace=True))

    def signal(history: RunHistory, heuristic: HeuristicPolicy) -> float:
        snap = snapshot(val_loss=history.val_losses[-1])
        snap.metrics.best_val_loss = min(history.val_losses)
        return float(global_features(PolicyContext.build(snap, graph(), history=history),
                                     heuristic)[SIGNAL_FEATURE])

    improving = RunHistory(val_losses=[1.0, 0.6])
    assert [signal(improving, h) for h in (plateau_only, slowdown, first_epoch)] == [0.0, 0.0, 0.0]
    slowing = RunHistory(val_losses=[1.0, 0.6, 0.55])  # gained 0.05 after 0.4: a slowdown
    assert [signal(slowing, h) for h in (plateau_only, slowdown, first_epoch)] == [0.0, 1.0, 1.0]
    flat = RunHistory(val_losses=[1.0, 0.6, 0.6, 0.6])
    assert [signal(flat, h) for h in (plateau_only, slowdown, first_epoch)] == [1.0, 1.0, 1.0]
    after_one_epoch = RunHistory(val_losses=[0.6], first_epoch_pace=0.2)
    assert [signal(after_one_epoch, h) for h in (plateau_only, slowdown, first_epoch)] == [0.0, 0.0, 1.0]


def _germination_context(model_flops: float = 0.0, flops: int = 0, slots: int = 1):
    """`slots` open slots of width 64, each offered a LoRA, an MLP and a MoE kernel (each
    `flops` forward FLOPs), the model's forward `model_flops` per example."""
    offered = [candidate("BP-LORA", params=500), candidate("BP-MLP-GELU", params=3000, gain=0.05),
               candidate("BP-MOE", params=200, risk=0.2)]
    for c in offered:
        c.kernel.stats.flops = flops
    ctx = context(g=graph(4 * slots, slot_every=4), candidates=offered, max_risk=1.0)
    ctx.snapshot.resources.model_flops_per_example = model_flops
    return ctx


def test_candidate_features_say_what_the_heuristic_ranking_says() -> None:
    """Per legal germination: legal, its value (benefit per cost, raised where the slot is
    unhealthy) over the best of all, is-that-best, its benefit per cost over its slot's
    best, its FLOPs share; 0 where no germination is legal."""
    ctx = _germination_context(model_flops=4000.0, flops=1000, slots=2)
    ctx.snapshot.layers.append(health(ctx.graph.slots[1].slot_id, dead=0.8))  # the sick slot
    policy = GnnPolicy(vocabulary=VOCAB)
    enc = policy.encoding(ctx)
    mask = policy.mask(ctx, enc)
    assert mask.candidates.shape == (enc.num_nodes, len(VOCAB), CANDIDATE_FEATURES)
    config, flops = policy.heuristic.config, ctx.snapshot.resources.model_flops_per_example
    sick = enc.slot_node[ctx.graph.slots[1].slot_id]
    values, scores = {}, {}
    for (node, j), kernel in mask.kernels.items():
        scores[node, j] = benefit_per_cost(kernel, config, flops)
        values[node, j] = scores[node, j] * (1.0 + HEALTH_WEIGHT * (1.0 - health_score(ctx.health_of(
            next(s for s in ctx.graph.slots if enc.slot_node[s.slot_id] == node)))))
    assert len(values) == 6
    best = max(values.values())
    for (node, j), value in values.items():
        legal, relative, is_best, in_slot, share = mask.candidates[node, j]
        slot_best = max(score for (n, _), score in scores.items() if n == node)
        assert legal == 1 and relative == pytest.approx(np.log(value / best), abs=1e-6)
        assert in_slot == pytest.approx(np.log(scores[node, j] / slot_best), abs=1e-6)
        assert is_best == (value == best) and share == pytest.approx(np.log1p(0.25))
    assert mask.candidates[..., 2].sum() == 1 and mask.candidates[sick, :, 2].sum() == 1  # the sick slot's
    unmasked = ~mask.blueprints
    assert not mask.candidates[unmasked].any()


@pytest.mark.parametrize(("model_flops", "flops"), [(float("nan"), 1), (float("inf"), 1), (-1.0, 1),
                                                     (0.0, 10**9), (1e-300, 2**64 - 1)])
def test_candidate_features_stay_bounded_on_hostile_counts(model_flops: float, flops: int) -> None:
    ctx = _germination_context(model_flops, flops)
    policy = GnnPolicy(vocabulary=VOCAB)
    features = policy.mask(ctx, policy.encoding(ctx)).candidates
    assert np.isfinite(features).all() and np.abs(features).max() <= 10.0


def test_the_candidate_head_picks_the_germination_the_heuristic_ranks_best() -> None:
    """With the node head's germinate and blueprint outputs silent, their logits are the
    candidate terms alone: a head that weighs "is the best" germinates where the heuristic
    would (the unhealthy slot), with the kernel it would pick."""
    ctx = _germination_context(slots=2)
    ctx.snapshot.layers.append(health(ctx.graph.slots[1].slot_id, dead=0.8))
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    enc = policy.encoding(ctx)
    mask = policy.mask(ctx, enc)
    with torch.no_grad():
        policy.net.node_head.weight[GERMINATE] = 0.0
        policy.net.node_head.bias[GERMINATE] = 0.0
        policy.net.node_head.weight[4:] = 0.0
        policy.net.node_head.bias[4:] = 0.0
        policy.net.candidate_head.weight[:] = torch.tensor([[0.0, 0.0, 20.0, 0.0, 0.0]])
    outputs = policy.forward_passes([(ctx, enc)])[0]
    candidates = torch.from_numpy(mask.candidates)
    node = int(outputs.slot_logits(GERMINATE, candidates).mean(0).masked_fill(
        ~torch.from_numpy(mask.slots[GERMINATE]), -1e9).argmax())
    assert node == enc.slot_node[ctx.graph.slots[1].slot_id]
    logits = outputs.blueprint_logits(node, candidates[node])
    assert (logits.argmax(dim=-1) == int(np.argmax(mask.candidates[node, :, 2]))).all()
    heuristic = policy.heuristic.decide(ctx)
    assert heuristic.WhichOneof("action") == "germinate"
    assert heuristic.germinate.slot_id == ctx.graph.slots[1].slot_id
    assert heuristic.germinate.blueprint_ref == VOCAB.refs[int(logits.mean(0).argmax())]


def test_no_germination_while_the_stream_rule_holds_growth() -> None:
    """The learned policy widens the stream by its heuristic's rule, and germinates by it:
    while the stream widened after the latest validation, no germination is legal (a seed
    then would keep the stream from widening again while it lives), whatever its net
    prefers; once a validation saw the widening, germination is legal again."""
    ctx = _germination_context()
    ctx.snapshot.stream.CopyFrom(ResidualStreamState(
        width=40, declared_width=32, max_width=40, feature_multiple=4, params_per_feature=10,
        widenings=1, last_widened_epoch=3))
    ctx.history.last_epoch = 3
    policy = GnnPolicy(config=ALWAYS, vocabulary=VOCAB)
    with torch.no_grad():  # a net that germinates whenever it may
        policy.net.action_head[-1].bias[:] = torch.tensor([50.0, 0.0, 0.0, 0.0, 0.0])
    mask = policy.mask(ctx, policy.encoding(ctx))
    assert not mask.actions[GERMINATE] and not mask.blueprints.any() and not mask.kernels
    assert not mask.candidates.any() and any("widened at epoch 3" in n for n in mask.notes)
    assert policy.decide(ctx).WhichOneof("action") != "germinate"
    ctx.history.last_epoch = 4
    assert policy.mask(ctx, policy.encoding(ctx)).actions[GERMINATE]
    assert policy.decide(ctx).WhichOneof("action") == "germinate"


def test_exploration_tries_only_what_the_learned_policy_could_choose() -> None:
    """Simic's exploring heuristic builds its random choices on the learned policy's own mask:
    while the stream's rule holds growth, no exploring decision germinates; after a
    validation saw the widening, exploration germinates again."""
    from esper.tamiyo.simic.episodes import ExploringHeuristic

    ctx = _germination_context()
    ctx.snapshot.stream.CopyFrom(ResidualStreamState(
        width=40, declared_width=32, max_width=40, feature_multiple=4, params_per_feature=10,
        widenings=1, last_widened_epoch=3))
    ctx.history.last_epoch = 3
    explore = ExploringHeuristic(GnnPolicy(config=ALWAYS, vocabulary=VOCAB).heuristic.config,
                                 epsilon=1.0, rng=random.Random(0), vocabulary=VOCAB)
    held = [explore.decide(ctx).WhichOneof("action") for _ in range(40)]
    assert "germinate" not in held
    ctx.history.last_epoch = 4
    assert "germinate" in [explore.decide(ctx).WhichOneof("action") for _ in range(40)]
