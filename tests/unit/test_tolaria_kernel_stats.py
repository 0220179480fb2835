"""Local kernels state their cost as Tezzeret's compiled kernels do: KernelStats.flops is
the forward FLOPs of one example of the slot's shape (every pixel or token), so a budget's
max_seed_flops and Urza's CostBudget.max_flops mean one thing for both kinds of kernel."""

from __future__ import annotations

import pytest

from esper.blueprints.artifact import unpack_kernel
from esper.kasmina.cache import KernelCache
from esper.leyline.v1 import common_pb2
from esper.leyline.v1.signals_pb2 import ModelGraph, SlotInfo, TrainingSnapshot
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.policy.budget import BudgetCheck
from esper.policy.context import PolicyContext
from esper.tezzeret.characterise import count_flops
from esper.tezzeret.tensors import example_input
from esper.tolaria.kernels import LocalKernels

CONV = common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_CONV2D, channels=8, height=14, width=14)
SEQUENCE = common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_SEQUENCE, channels=32, length=64)
FEATURES = common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_FEATURES, channels=32)


def _candidate(kernels: LocalKernels, ref: str, shape) -> KernelCandidate:
    return kernels.find(ref, shape)


@pytest.mark.parametrize("ref,shape", [
    ("BP-CONV-RES3X3@1.0.0", CONV), ("BP-CONV-DWSEP@1.0.0", CONV),
    ("BP-MLP-GELU@1.0.0", SEQUENCE), ("BP-ATTN-MHA@1.0.0", SEQUENCE),
    ("BP-LORA-R8@1.0.0", SEQUENCE), ("BP-MLP-GELU@1.0.0", FEATURES),
])
def test_local_kernel_flops_are_per_example_as_tezzeret_measures(ref, shape):
    kernels = LocalKernels(KernelCache())
    cand = _candidate(kernels, ref, shape)
    data = kernels.cache.get_ready(cand.kernel.kernel_id, cand.kernel.sha256)
    _, _, module = unpack_kernel(data, cand.kernel.sha256)
    measured = count_flops(module, example_input(cand.kernel.target, 1, 7))
    # The estimate also counts elementwise ops, which the flop counter does not.
    assert measured <= cand.kernel.stats.flops <= 1.1 * measured, (ref, cand.kernel.stats.flops, measured)


def test_max_seed_flops_is_checked_per_example():
    kernels = LocalKernels(KernelCache())
    cand = _candidate(kernels, "BP-CONV-RES3X3@1.0.0", CONV)
    flops = cand.kernel.stats.flops
    slot = SlotInfo(slot_id="s", node_id="conv", shape=CONV)
    graph = ModelGraph(slots=[slot])

    def reason(limit: int) -> str | None:
        ctx = PolicyContext.build(TrainingSnapshot(run_id="r"), graph,
                                  capabilities=Capabilities(tags=["conv2d"]),
                                  budget=ResourceBudget(max_seed_flops=limit))
        return BudgetCheck(ctx, 1.0).reason(cand, slot)

    assert reason(flops) is None
    assert "flops" in (reason(flops - 1) or "")
    assert "flops" in (reason(flops // (14 * 14)) or "")  # a per-position limit no longer fits
