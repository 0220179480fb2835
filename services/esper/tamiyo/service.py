"""`esper serve tamiyo`: the strategic controller's gRPC server."""

from __future__ import annotations

import grpc
import torch
from esper.leyline.v1 import tamiyo_pb2_grpc
from esper.runtime.server import Closer, ServiceSpec, StartupError
from esper.tamiyo.config import TamiyoConfig
from esper.tamiyo.decider import Decider
from esper.tamiyo.policies.artifact import PolicyArtifactError
from esper.tamiyo.policy_registry import PolicyRegistry
from esper.tamiyo.runs import RunRegistry
from esper.tamiyo.servicer import TamiyoServicer
from esper.tamiyo.session import SessionContext
from esper.tamiyo.urza_candidates import UrzaCandidates

__all__ = ["SPEC", "TamiyoConfig", "start"]


async def start(config: TamiyoConfig, server: grpc.aio.Server) -> Closer:
    torch.set_num_threads(config.torch_threads)
    policies = PolicyRegistry()
    if config.gnn_artifact:
        try:
            await policies.load_gnn(config.gnn_artifact, config.gnn_artifact_sha256)
        except PolicyArtifactError as exc:
            raise StartupError(f"gnn_artifact: {exc}") from None
    urza = UrzaCandidates(config.urza_address, config.urza_timeout_s, config.candidate_cache_s)
    decider = Decider(policies, urza)
    shared = SessionContext(config, RunRegistry(config.max_runs), decider)
    tamiyo_pb2_grpc.add_TamiyoServiceServicer_to_server(TamiyoServicer(shared), server)

    async def close() -> None:
        decider.close()
        await urza.close()

    return close


SPEC = ServiceSpec(
    name="tamiyo",
    config_cls=TamiyoConfig,
    grpc_services=("esper.leyline.v1.TamiyoService",),
    start=start,
    description="the strategic controller: turns training snapshots into adaptation decisions",
)
