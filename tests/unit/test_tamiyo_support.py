"""Builders of Leyline messages for Tamiyo's tests (no tests here)."""

from __future__ import annotations

from esper.leyline.v1.blueprint_pb2 import BlueprintMetadata, BlueprintSpec
from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.kernel_pb2 import KernelArtifact, KernelState, KernelStats, KernelTarget
from esper.leyline.v1.lifecycle_pb2 import SeedMetrics, SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import (
    GraphEdge,
    GraphNode,
    LayerHealth,
    ModelGraph,
    SlotInfo,
    TrainingMetrics,
    TrainingSnapshot,
)
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy import PolicyContext, RunHistory, StaticCandidateProvider

WIDTH = 16


def graph(n_nodes: int = 4, slot_every: int = 1, width: int = WIDTH) -> ModelGraph:
    """A chain of Linear nodes; every `slot_every`-th node has a slot "s<i>"."""
    g = ModelGraph()
    for i in range(n_nodes):
        slot_id = f"s{i}" if i % slot_every == 0 else ""
        g.nodes.append(GraphNode(node_id=f"n{i}", op_type="Linear", in_dim=width, out_dim=width,
                                 params=width * width + width, slot_id=slot_id, depth=i))
        if i:
            g.edges.append(GraphEdge(source=f"n{i - 1}", target=f"n{i}"))
        if slot_id:
            g.slots.append(SlotInfo(slot_id=slot_id, node_id=f"n{i}",
                                    shape=SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=width)))
    return g


def candidate(name: str = "BP-MLP-GELU", params: int = 1000, risk: float = 0.1, gain: float = 0.0,
              latency: float = 0.1, kernel_id: str | None = None, width: int = WIDTH) -> KernelCandidate:
    kid = kernel_id or f"k-{name.lower()}-{params}"
    return KernelCandidate(
        kernel=KernelArtifact(
            kernel_id=kid, blueprint_ref=f"{name}@1.0.0", sha256="ab" * 32,
            target=KernelTarget(device="cpu", shape=SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=width)),
            stats=KernelStats(params=params, latency_p99_ms=latency), state=KernelState.KERNEL_STATE_VALID,
        ),
        blueprint=BlueprintSpec(
            name=name, version="1.0.0", slot_kinds=[SlotKind.SLOT_KIND_FEATURES],
            metadata=BlueprintMetadata(risk_score=risk, past_accuracy_gain_estimate=gain),
        ),
        score=1.0,
    )


def seed(slot_id: str, stage: int, *, steps: int = 0, alpha: float = 0.0, params: int = 1000,
         val_start: float = 1.0, val_now: float = 1.0, non_finite: int = 0, germinated_at: int = 0,
         embargo_until: int = 0) -> SeedState:
    return SeedState(
        seed_id=f"seed-{slot_id}" if stage != SeedStage.SEED_STAGE_DORMANT else "", slot_id=slot_id,
        stage=stage, steps_in_stage=steps, alpha=alpha, germinated_at_step=germinated_at,
        embargo_until_step=embargo_until,
        metrics=SeedMetrics(params=params, val_loss_at_stage_start=val_start, val_loss=val_now,
                            non_finite_count=non_finite),
    )


def snapshot(step: int = 1000, *, seeds=(), layers=(), val_loss: float = 1.0, plateau_epochs: int = 0,
             run_id: str = "run-1", epoch: int = 5) -> TrainingSnapshot:
    return TrainingSnapshot(
        run_id=run_id, step=step, epoch=epoch, sequence=step, epoch_end=True,
        metrics=TrainingMetrics(train_loss=1.0, val_loss=val_loss, plateau_epochs=plateau_epochs),
        layers=list(layers), seeds=list(seeds),
    )


def loss_snapshot(step: int, epoch: int, train_loss: float, epoch_end: bool = False,
                  val: float = float("nan")) -> TrainingSnapshot:
    """A snapshot carrying only its position and losses (what RunHistory reads)."""
    return TrainingSnapshot(run_id="r", step=step, epoch=epoch, sequence=step, epoch_end=epoch_end,
                            metrics=TrainingMetrics(train_loss=train_loss, val_loss=val))


def health(layer_id: str, dead: float = 0.0, saturated: float = 0.0, grad: float = 0.1) -> LayerHealth:
    return LayerHealth(layer_id=layer_id, dead_fraction=dead, saturated_fraction=saturated, gradient_norm=grad)


PLATEAU = [1.0, 0.9, 0.8, 0.8, 0.8, 0.8]
IMPROVING = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]


def context(*, g: ModelGraph | None = None, seeds=(), layers=(), val_history=PLATEAU, candidates=None,
            max_live: int = 2, max_params: int = 0, max_risk: float = 0.0, step: int = 1000,
            provider=None) -> PolicyContext:
    g = g or graph()
    provider = provider or StaticCandidateProvider(candidates if candidates is not None else [candidate()])
    return PolicyContext.build(
        snapshot(step, seeds=seeds, layers=layers), g,
        capabilities=Capabilities(device="cpu", max_live_seeds=max_live),
        budget=ResourceBudget(max_added_params=max_params, max_risk=max_risk),
        history=RunHistory(val_losses=list(val_history)), candidates=provider,
    )
