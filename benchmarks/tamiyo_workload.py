"""What Tamiyo's benchmarks send: the 100-node model graph, a snapshot that earns a decision
every time, a client stream fed from a queue (as Tolaria feeds its Session), and their small
helpers. Shared by bench_tamiyo_session.py and bench_tamiyo_load.py (run as scripts, this
directory is on sys.path)."""

from __future__ import annotations

import asyncio
import socket
import statistics
from collections.abc import Callable

from esper.leyline.v1.common_pb2 import SlotKind, SlotShape
from esper.leyline.v1.lifecycle_pb2 import SeedStage, SeedState
from esper.leyline.v1.signals_pb2 import (
    GraphEdge,
    GraphNode,
    ModelGraph,
    SlotInfo,
    TrainingMetrics,
    TrainingSnapshot,
)

NODES = 100
SLOT_EVERY = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_graph() -> ModelGraph:
    g = ModelGraph()
    for i in range(NODES):
        slot = f"s{i}" if i % SLOT_EVERY == 0 else ""
        g.nodes.append(GraphNode(node_id=f"n{i}", op_type="Linear", in_dim=64, out_dim=64, params=4160,
                                 slot_id=slot, depth=i))
        if i:
            g.edges.append(GraphEdge(source=f"n{i - 1}", target=f"n{i}"))
        if slot:
            g.slots.append(SlotInfo(slot_id=slot, node_id=f"n{i}",
                                    shape=SlotShape(kind=SlotKind.SLOT_KIND_FEATURES, channels=64)))
    return g


def snapshot(run_id: str, step: int) -> TrainingSnapshot:
    # A germinated seed: the heuristic advances it every time (one decision per snapshot).
    seed = SeedState(seed_id="seed-0", slot_id="s0", stage=SeedStage.SEED_STAGE_GERMINATED)
    return TrainingSnapshot(run_id=run_id, step=step, epoch=0, sequence=step, seeds=[seed],
                            metrics=TrainingMetrics(train_loss=0.5, val_loss=0.6))


def percentiles(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            "samples": len(ms)}


class Stream:
    """One bidi stream fed from a queue (as Tolaria feeds its Session)."""

    def __init__(self, open_call: Callable) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.call = open_call(self._requests())

    async def _requests(self):
        while (item := await self.queue.get()) is not None:
            yield item

    def send(self, message) -> None:
        self.queue.put_nowait(message)

    def close(self) -> None:
        self.queue.put_nowait(None)
        self.call.cancel()
