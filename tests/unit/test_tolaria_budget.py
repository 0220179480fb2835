"""The budget a session sends its policy includes Kasmina's seed-parameter cap (and, for a
host that declares its residual stream, what the stream may add)."""

from __future__ import annotations

import torch

from esper.kasmina import KasminaConfig
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.tolaria import TolariaConfig, attach
from esper.tolaria.budget import runtime_budget


def test_unlimited_budget_becomes_the_kasmina_cap() -> None:
    assert runtime_budget(None, 1000, 0.5).max_added_params == 500


def test_caller_budget_is_tightened_never_loosened() -> None:
    assert runtime_budget(ResourceBudget(max_added_params=300), 1000, 0.5).max_added_params == 300
    out = runtime_budget(ResourceBudget(max_added_params=900, max_risk=0.2), 1000, 0.5)
    assert out.max_added_params == 500 and abs(out.max_risk - 0.2) < 1e-9


def test_the_stream_allowance_is_added_to_the_seeds_room() -> None:
    assert runtime_budget(None, 1000, 0.5, stream_params=700).max_added_params == 1200
    assert runtime_budget(ResourceBudget(max_added_params=900), 1000, 0.5, 700).max_added_params == 900


def test_session_open_carries_the_runtime_budget() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    session = attach(model, torch.optim.SGD(model.parameters(), lr=0.1), "none",
                     kasmina=KasminaConfig(max_seed_param_fraction=0.25),
                     config=TolariaConfig(progress=False))
    try:
        host = sum(p.numel() for p in model.parameters())
        assert session.open_message.budget.max_added_params == int(0.25 * host)
    finally:
        session.close()


def test_trainer_plans_the_steps_of_a_training_flops_budget() -> None:
    """A budget with max_training_flops and no planned_steps gets the Trainer's epochs x
    batches; the caller's message is not changed; a budget with its own horizon keeps it."""
    from esper.tolaria import Trainer
    from esper.tolaria.tasks import load_task

    task = load_task("digits", batch_size=64, seed=0)
    budget = ResourceBudget(max_training_flops=1e12)
    trainer = Trainer(task.model, lambda p: torch.optim.SGD(p, lr=0.1), task.train_loader,
                      task.val_loader, epochs=3, budget=budget,
                      config=TolariaConfig(progress=False))
    try:
        assert trainer.session.open_message.budget.planned_steps == 3 * len(task.train_loader)
        assert budget.planned_steps == 0
    finally:
        trainer.session.close()
    own = ResourceBudget(max_training_flops=1e12, planned_steps=7)
    trainer = Trainer(task.model, lambda p: torch.optim.SGD(p, lr=0.1), task.train_loader,
                      epochs=3, budget=own, config=TolariaConfig(progress=False))
    try:
        assert trainer.session.open_message.budget.planned_steps == 7
    finally:
        trainer.session.close()
