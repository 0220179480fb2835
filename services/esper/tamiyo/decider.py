"""One decision: fetch candidates from Urza, build the policy context, run the policy.
The heuristic runs inline (microseconds: a thread hop would cost more); the learned policy
runs off the event loop, its decisions from all sessions batched (esper.tamiyo.batcher),
except a lone session's.

When Urza offers no kernel for a slot, the kernel supply is asked (in the background) to
have Tezzeret compile the suitable built-in blueprints; when no slot has any kernel, the
policy is told why (compiles pending, or Tezzeret unreachable), so it waits and says so."""

from __future__ import annotations

from esper.leyline.v1.control_pb2 import AdaptationDecision
from esper.leyline.v1.lifecycle_pb2 import SeedState
from esper.leyline.v1.signals_pb2 import ModelGraph, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget
from esper.policy import PolicyContext, RunHistory
from esper.tamiyo.batcher import DecisionBatcher
from esper.tamiyo.kernel_supply import KernelSupply
from esper.tamiyo.policy_registry import PolicyRegistry
from esper.tamiyo.urza_candidates import UrzaCandidates


class Decider:
    def __init__(self, policies: PolicyRegistry, urza: UrzaCandidates, supply: KernelSupply | None = None,
                 batcher: DecisionBatcher | None = None) -> None:
        self.policies = policies
        self.urza = urza
        self.supply = supply or KernelSupply("", "", 1.0)
        self.batcher = batcher or DecisionBatcher(window_s=0.0, workers=1)

    def close(self) -> None:
        self.batcher.close()

    async def decide(
        self,
        policy_name: str,
        snapshot: TrainingSnapshot,
        graph: ModelGraph,
        capabilities: Capabilities,
        budget: ResourceBudget,
        *,
        seeds: dict[str, SeedState] | None = None,
        history: RunHistory | None = None,
        run_id: str | None = None,
        graph_digest: str = "",
    ) -> AdaptationDecision:
        """Raises PolicyUnavailable for an unknown or unloaded policy. `graph_digest`: the
        graph's, where the caller keeps it (esper.policy.PolicyContext.graph_digest)."""
        policy = self.policies.get(policy_name)
        provider = await self.urza.fetch(graph, capabilities, budget)
        if provider.unavailable_reason is None and provider.empty_slots(graph):
            self.supply.ensure(graph, capabilities)
            if len(provider.empty_slots(graph)) == len(graph.slots):
                provider = provider.without_kernels(
                    f"Urza has no kernel for this run's slots yet; {self.supply.reason()}")
        ctx = PolicyContext.build(
            snapshot, graph, capabilities=capabilities, budget=budget, seeds=seeds,
            history=history, candidates=provider, run_id=run_id, graph_digest=graph_digest,
        )
        if policy is self.policies.heuristic:
            return policy.decide(ctx)
        return await self.batcher.decide(policy, ctx, run_id)
