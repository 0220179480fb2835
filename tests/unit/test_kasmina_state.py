"""Checkpoint/resume of seed state gives the same continuation; compile equivalence."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from esper.kasmina import BlueprintSeedBuilder, DecisionApplier, KasminaConfig, wrap
from esper.kasmina.state import builder_rebuilder, kasmina_state, load_kasmina_state
from esper.leyline.v1.control_pb2 import (
    AdaptationDecision,
    AdvanceAction,
    BlendSchedule,
    GerminateAction,
)

X = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
Y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(4))


def make():
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), example_input=X,
                 config=KasminaConfig(max_seed_param_fraction=100.0))
    return model


def run(model, opt, n):
    losses = []
    for _ in range(n):
        loss = nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        opt.step()
        model.seed_step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def start():
    model = make()
    builder = BlueprintSeedBuilder()
    applier = DecisionApplier(model, builder)
    applier.apply(AdaptationDecision(decision_id="g", germinate=GerminateAction(
        slot_id="0", blueprint_ref="BP-MLP-GELU@1.0.0",
        schedule=BlendSchedule(blend_steps=6, training_steps=2))))
    applier.apply(AdaptationDecision(decision_id="t", advance=AdvanceAction(slot_id="0")))
    opt = torch.optim.SGD([{"params": model.host.parameters()},
                           {"params": model.slots["0"].seed_parameters()}], lr=0.1)
    run(model, opt, 3)
    model.safe_point()
    model.slots["0"].record.seed_improvement = min(model.slots["0"].record.seed_improvement, -1)
    model.slots["0"].advance(model.global_step)  # BLENDING
    run(model, opt, 2)
    return model, builder, applier, opt


def test_resume_continues_identically():
    model, builder, applier, opt = start()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "kasmina": kasmina_state(model, applier.answered),
                "opt": opt.state_dict()}, buf)
    expected = run(model, opt, 4)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    fresh = make()
    applied = load_kasmina_state(fresh, ckpt["kasmina"], builder_rebuilder(builder))
    fresh.load_state_dict(ckpt["model"])
    opt2 = torch.optim.SGD([{"params": fresh.host.parameters()},
                            {"params": fresh.slots["0"].seed_parameters()}], lr=0.1)
    opt2.load_state_dict(ckpt["opt"])
    assert set(applied) == {"g", "t"}
    assert run(fresh, opt2, 4) == expected
    assert fresh.slots["0"].stage == model.slots["0"].stage


def _compile_check(backend):
    torch._dynamo.reset()
    model = make()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), model(X))
    slot = model.slots["0"]
    from esper.blueprints.builder import build_seed
    from esper.blueprints.catalog import get_builtin

    seed = build_seed(get_builtin("BP-MLP-GELU@1.0.0"), slot.shape)
    with torch.no_grad():
        for p in seed.parameters():
            p.normal_(0, 0.1)
    slot.germinate(seed, step=0, function_preserving=False)
    slot.advance(0)
    slot.record.seed_improvement, slot.record.steps_in_stage = -1.0, 100
    slot.advance(0)
    slot._set_alpha_step(50)  # alpha 0.5: seed visible in the output
    out_c = compiled(X)
    out_e = model(X)
    torch.testing.assert_close(out_c, out_e)
    out_c.sum().backward()
    assert all(p.grad is not None for p in slot.seed_parameters())


def test_compile_eager_equivalence_aot_eager():
    _compile_check("aot_eager")


@pytest.mark.slow
def test_compile_eager_equivalence_inductor():
    _compile_check("inductor")
