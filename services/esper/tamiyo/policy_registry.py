"""The policies a Tamiyo server runs: the heuristic, always; the learned one when its
artifact is loaded. Reloading swaps the GNN atomically (sessions pick it up on their next
decision); loading runs in a thread, never on the event loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from esper.leyline.v1.tamiyo_pb2 import PolicyInfo
from esper.policy import HeuristicPolicy, Policy
from esper.tamiyo.policies.errors import PolicyArtifactError

log = logging.getLogger("esper.tamiyo.policies")


class PolicyUnavailable(Exception):
    """The named policy is unknown or not loaded."""


class PolicyRegistry:
    def __init__(self, heuristic: HeuristicPolicy | None = None,
                 torch_threads: int | None = None) -> None:
        """`torch_threads`: torch's intra-op threads, set when the learned policy is first
        loaded (torch is imported only then: a heuristic-only Tamiyo starts without it)."""
        self.heuristic = heuristic or HeuristicPolicy()
        self.torch_threads = torch_threads
        self.gnn: Policy | None = None
        self.gnn_artifact = ""
        self._reload_lock = asyncio.Lock()

    def get(self, name: str) -> Policy:
        if name == "heuristic":
            return self.heuristic
        if name == "gnn":
            if self.gnn is None:
                raise PolicyUnavailable("policy 'gnn' is not loaded (configure gnn_artifact or call ReloadPolicy)")
            return self.gnn
        raise PolicyUnavailable(f"unknown policy {name!r}; known: heuristic, gnn")

    def infos(self) -> list[PolicyInfo]:
        gnn = PolicyInfo(name="gnn", loaded=self.gnn is not None, artifact=self.gnn_artifact,
                         version=self.gnn.version if self.gnn is not None else "")
        return [PolicyInfo(name="heuristic", version=self.heuristic.version, loaded=True), gnn]

    async def load_gnn(self, path: str, expected_sha256: str = "") -> PolicyInfo:
        """Load (or reload) the learned policy; PolicyArtifactError when the file is refused."""
        import torch

        from esper.tamiyo.policies.artifact import load_policy  # torch: imported on first use
        from esper.tamiyo.policies.gnn import GnnPolicy

        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)

        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            artifact = await loop.run_in_executor(
                None, lambda: load_policy(path, expected_sha256=expected_sha256 or None))
            self.gnn = GnnPolicy(artifact, heuristic=self.heuristic)
            self.gnn_artifact = str(Path(path))
            log.info("gnn policy loaded", extra={"artifact": path, "version": artifact.version})
            return self.infos()[1]


__all__ = ["PolicyArtifactError", "PolicyRegistry", "PolicyUnavailable"]
