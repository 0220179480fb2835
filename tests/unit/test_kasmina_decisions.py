"""Decisions applied with defence in depth; one ack per decision id; training continues."""

from __future__ import annotations

import time

import torch
from torch import nn

from esper.blueprints.artifact import pack_kernel, sha256_hex
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.kasmina import BlueprintSeedBuilder, DecisionApplier, KasminaConfig, KernelCache, wrap
from esper.leyline.v1.control_pb2 import (
    AckStatus,
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    CullAction,
    FossilizeAction,
    GerminateAction,
    WaitAction,
)
from esper.leyline.v1.lifecycle_pb2 import SeedStage

A = AckStatus
X = torch.randn(8, 6)
Y = torch.randint(0, 3, (8,))


def setup(cfg=None, cache=None):
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)),
                 lambda name, module: True,  # the logits layer too (not a default slot)
                 example_input=X, config=cfg or KasminaConfig(max_seed_param_fraction=100.0))
    return model, DecisionApplier(model, BlueprintSeedBuilder(cache=cache), run_id="r1")


def step(model):
    nn.functional.cross_entropy(model(X), Y).backward()
    model.seed_step()
    model.zero_grad()


def germ(did, slot="0", ref="BP-MLP-GELU@1.0.0", **kw):
    return AdaptationDecision(decision_id=did, germinate=GerminateAction(
        slot_id=slot, blueprint_ref=ref, schedule=BlendSchedule(blend_steps=2), **kw))


def test_germinate_then_advance_applied_with_gate():
    model, applier = setup()
    ack = applier.apply(germ("d1"))
    assert ack.status == A.ACK_STATUS_APPLIED and ack.seed_id and ack.gate.passed
    ack = applier.apply(AdaptationDecision(decision_id="d2", advance=AdvanceAction(slot_id="0")))
    assert ack.status == A.ACK_STATUS_APPLIED, ack.reason
    assert model.slots["0"].stage == SeedStage.SEED_STAGE_TRAINING
    step(model)


def test_bad_decisions_rejected_with_reason_and_training_continues():
    model, applier = setup(KasminaConfig(max_live_seeds=1, max_seed_param_fraction=100.0))
    cases = [
        (germ("u1", slot="nope"), "unknown slot"),
        (germ("u2", ref="BP-NOPE@9.9.9"), "unknown blueprint"),
        (AdaptationDecision(decision_id="u3", fossilize=FossilizeAction(slot_id="0")),
         "illegal seed transition DORMANT -> FOSSILIZED"),
        (AdaptationDecision(decision_id="u4", cull=CullAction(slot_id="0")), "illegal"),
        (AdaptationDecision(decision_id=""), "decision_id is empty"),
        (AdaptationDecision(decision_id="u5"), "no action"),
        (germ("u6", ref="BP-CONV-RES3X3@1.0.0"), "does not support slot kind"),
    ]
    for decision, reason in cases:
        ack = applier.apply(decision)
        assert ack.status == A.ACK_STATUS_REJECTED and reason in ack.reason, ack.reason
        step(model)
    assert applier.apply(germ("ok")).status == A.ACK_STATUS_APPLIED
    ack = applier.apply(germ("budget", slot="2"))
    assert ack.status == A.ACK_STATUS_REJECTED and "max_live_seeds" in ack.reason
    ack = applier.apply(germ("ok"))
    assert ack.status == A.ACK_STATUS_REJECTED and "duplicate" in ack.reason
    ack = applier.apply(AdaptationDecision(decision_id="g2", advance=AdvanceAction(
        slot_id="0", target_stage=SeedStage.SEED_STAGE_BLENDING)))
    assert ack.status == A.ACK_STATUS_REJECTED and "GERMINATED -> BLENDING" in ack.reason
    step(model)


def test_param_budget_and_expiry_and_wait():
    model, applier = setup(KasminaConfig(max_seed_param_fraction=0.01))
    ack = applier.apply(germ("b"))
    assert ack.status == A.ACK_STATUS_REJECTED and "max_seed_param_fraction" in ack.reason
    step(model), step(model)
    ack = applier.apply(AdaptationDecision(decision_id="e", expires_at_step=1,
                                           wait=WaitAction(steps=3)))
    assert ack.status == A.ACK_STATUS_EXPIRED and "expired" in ack.reason
    ack = applier.apply(AdaptationDecision(decision_id="w", wait=WaitAction(steps=3)))
    assert ack.status == A.ACK_STATUS_APPLIED


def test_gate_refusal_is_a_rejection_with_the_gate_result():
    model, applier = setup()
    applier.apply(germ("g"))
    applier.apply(AdaptationDecision(decision_id="t", advance=AdvanceAction(slot_id="0")))
    ack = applier.apply(AdaptationDecision(decision_id="b", advance=AdvanceAction(slot_id="0")))
    assert ack.status == A.ACK_STATUS_REJECTED and not ack.gate.passed
    assert any(c.name == "min_steps" and not c.passed for c in ack.gate.checks)


def test_kernel_germination_through_cache_and_digest_mismatch():
    spec = get_builtin("BP-LORA-R8@1.0.0")
    model, _ = setup()
    kernel = pack_kernel(spec, model.slots["0"].shape, build_seed(spec, model.slots["0"].shape))
    digest = sha256_hex(kernel)
    cache = KernelCache(lambda kid: kernel, max_bytes=1 << 20)
    model, applier = setup(cache=cache)
    kw = dict(ref="BP-LORA-R8@1.0.0", kernel_id="k-1")
    ack = applier.apply(germ("k1", kernel_sha256=digest, **kw))
    assert ack.status == A.ACK_STATUS_REJECTED and "not ready" in ack.reason
    for _ in range(200):
        if cache.get_ready("k-1", digest) is not None:
            break
        time.sleep(0.01)
    ack = applier.apply(germ("k2", kernel_sha256=digest, **kw))
    assert ack.status == A.ACK_STATUS_APPLIED, ack.reason
    assert model.slots["0"].record.kernel_digest == digest
    ack = applier.apply(germ("k3", slot="2", kernel_sha256="0" * 64, **kw))
    assert ack.status == A.ACK_STATUS_REJECTED and "sha256" in ack.reason
