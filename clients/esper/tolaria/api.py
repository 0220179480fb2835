"""attach(): the hook API for users who keep their own training loop.

    model = MyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    session = esper.tolaria.attach(model, optimizer)          # local heuristic policy
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            out = model(x); loss = F.cross_entropy(out, y); loss.backward()
            optimizer.step()
            session.step(loss, out, y)
        session.end_epoch({"val_loss": ..., "val_accuracy": ...})
    session.close()

The user's model keeps working as before: seeds hook into its modules, so calling the
original model runs them; `session.model` is the wrapped (MorphableModel) view.

Under torch.distributed the same code runs on every rank, with the model wrapped in
DistributedDataParallel before or after `attach` (esper.tolaria.distributed says how the
replicas stay identical).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from esper.kasmina import BlueprintSeedBuilder, KasminaConfig, KernelCache, wrap
from esper.kasmina.wrap import MorphableModel, SlotChoice
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.tolaria.budget import validate_budget
from esper.tolaria.checkpoint import load_checkpoint, restore_session
from esper.tolaria.config import TolariaConfig
from esper.tolaria.distributed import process_replicas, unwrap_ddp
from esper.tolaria.kernels import LocalKernels, UrzaKernelFetcher
from esper.tolaria.policy.base import PolicySource
from esper.tolaria.policy.local import LocalPolicy
from esper.tolaria.session import TolariaSession
from esper.tolaria.telemetry import Telemetry

POLICY_CHOICES = ("local", "none")


def attach(model: nn.Module, optimizer, policy: str | PolicySource | None = "local", *,
           slots: SlotChoice = None, example_input: object = None,
           kasmina: KasminaConfig | None = None, config: TolariaConfig | None = None,
           urza: str | None = None, kernel_fetch: Callable[[str], bytes] | None = None,
           blueprints: list[str] | None = None,
           budget: ResourceBudget | None = None, resume: str | dict | None = None,
           telemetry: Telemetry | None = None) -> TolariaSession:
    """Attach a Tolaria session to `model` (wrapped with seed slots unless it already is)
    and `optimizer` (seed param groups are added to it).

    policy: "local" (in-process heuristic), "none" (never decides), or a PolicySource such
    as RemotePolicy. urza: address of Urza for remote kernels (or kernel_fetch: any
    `kernel_id -> bytes` function; the cache verifies the digest). blueprints: restrict the
    local catalogue to these refs or names. resume: a checkpoint path (or loaded dict);
    the run id comes from it. The caller's `config` is never changed: the session keeps
    its own copy (`session.config`)."""
    config = dataclasses.replace(config) if config is not None else TolariaConfig()
    state = load_checkpoint(resume) if isinstance(resume, str) else resume
    if state is not None:
        config.run_id = state["run_id"]
    config.validate()
    validate_budget(budget)  # before the model is wrapped
    bare = unwrap_ddp(model)  # seeds hook into the module DDP runs
    replicas = process_replicas(ddp_holds_host=bare is not model)
    model = bare
    morph = model if isinstance(model, MorphableModel) else wrap(
        model, slots, example_input=example_input, config=kasmina)
    if urza and kernel_fetch:
        raise ValueError("give urza or kernel_fetch, not both")
    cache = KernelCache(fetch=UrzaKernelFetcher(urza) if urza else kernel_fetch)
    local_kernels = LocalKernels(cache, blueprints=blueprints)
    source, fallback = _policies(policy, local_kernels, config)
    follower = replicas is not None and not replicas.leader
    if follower:  # rank 0 alone holds the policy and publishes the run's telemetry
        source = fallback = None
        telemetry = Telemetry(config.run_id)
    session = TolariaSession(
        morph, optimizer, source, config=config, seed_builder=BlueprintSeedBuilder(cache=cache),
        cache=cache, fallback=fallback,
        telemetry=telemetry or Telemetry(config.run_id, config.kafka_bootstrap), budget=budget,
        replicas=replicas,
    )
    session.local_kernels = local_kernels
    if state is not None:
        session.loop_state = restore_session(session, state)
        if follower:
            session.pending = []  # rank 0 holds the checkpoint's pending decisions
    return session.start()


def _policies(policy, local_kernels: LocalKernels, config: TolariaConfig):
    if policy is None or policy == "none":
        return None, None
    if policy == "local":
        return LocalPolicy(local_kernels), None
    if isinstance(policy, str):
        raise ValueError(  # noqa: TRY004 - a string, just not a known one
            f"policy must be one of {POLICY_CHOICES} or a PolicySource, got {policy!r}")
    if isinstance(policy, LocalPolicy):
        if policy.candidates is None:
            policy.candidates = local_kernels
        return policy, None
    fallback = LocalPolicy(local_kernels) if config.on_outage == "local" else None
    return policy, fallback
