"""`esper serve tezzeret`: the forge's gRPC server, its job database, the republisher and
(config `workers = N`) in-process compile workers."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from esper.leyline.v1 import tezzeret_pb2_grpc
from esper.runtime.quota import RateQuota
from esper.runtime.server import Closer, ServiceSpec
from esper.tezzeret.config import TezzeretConfig
from esper.tezzeret.deps import connect
from esper.tezzeret.republish import sweep_forever
from esper.tezzeret.requests import RequestPublisher
from esper.tezzeret.servicer import TezzeretServicer
from esper.tezzeret.watch import JobWatchHub

__all__ = ["SPEC", "TezzeretConfig", "start"]


async def start(config: TezzeretConfig, server: grpc.aio.Server) -> Closer:
    deps = await connect(config)
    publisher = RequestPublisher(config.kafka_bootstrap)
    hub = JobWatchHub(deps.store, config.postgres_dsn, config.postgres_connect_timeout)
    await hub.start()
    sweeper = asyncio.create_task(sweep_forever(
        deps.store, publisher, first_older_than_s=config.job_lease_s,
        older_than_s=config.republish_after_s, interval_s=config.republish_interval_s),
        name="tezzeret-republish")
    await deps.start_workers(config.workers)
    servicer = TezzeretServicer(deps.store, publisher, deps.urza, deps.events, hub,
                                config.dependency_timeout_s,
                                RateQuota("SubmitCompile", config.compile_jobs_per_minute))
    tezzeret_pb2_grpc.add_TezzeretServiceServicer_to_server(servicer, server)

    async def close() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await hub.close()
        await publisher.close()
        await deps.close()

    return close


SPEC = ServiceSpec(
    name="tezzeret",
    config_cls=TezzeretConfig,
    grpc_services=("esper.leyline.v1.TezzeretService",),
    start=start,
    description="the forge: compiles, validates and characterises blueprints into kernels",
)
