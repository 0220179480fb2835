"""The four Esper servers as child processes (`python -m esper.cli.main serve NAME`),
configured through the `ESPER_*` environment the runtime's typed config reads, and probed
with the standard gRPC health check."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from esper.rpc.channels import ChannelSecurity
from esper.rpc.health import check_health
from esper.runtime.infra.launcher import LoopbackProcess
from esper.runtime.infra.paths import log_path, pid_path
from esper.runtime.infra.ports import LOOPBACK, ensure_port_free
from esper.runtime.infra.process import ManagedProcess, ProcessSpec

# A server imports grpc, protobuf and (some) torch before it binds; four of them start at
# once on a 2-core machine, so allow well over the expected few seconds.
READY_TIMEOUT_S = 90.0
# The runtime's default shutdown grace is 5 s for in-flight RPCs; leave headroom for it.
STOP_GRACE_S = 15.0
HEALTH_TIMEOUT_S = 1.0
# Health check of the whole server (the empty service name), per grpc_health.v1.
OVERALL_HEALTH = ""


def health_check(address: str, timeout_s: float = HEALTH_TIMEOUT_S,
                 security: ChannelSecurity | None = None) -> bool:
    """True when `Health/Check` with service "" answers SERVING."""
    return check_health(address, OVERALL_HEALTH, timeout_s=timeout_s, security=security) == "SERVING"


class ServerProcess(LoopbackProcess):
    """One Esper server on 127.0.0.1:`port`, its log and pid file under `state_dir`."""

    ready_what = "SERVING on its health check"
    ready_timeout_s = READY_TIMEOUT_S

    def __init__(
        self,
        state_dir: Path,
        name: str,
        port: int,
        metrics_port: int,
        settings: Mapping[str, str],
        security: ChannelSecurity | None = None,
        service: str | None = None,
    ) -> None:
        """`name` names the process (its log, pid file, row); `service` the server it runs
        (default: `name`; Tamiyo's replicas `tamiyo-2`… run `tamiyo`)."""
        self.security = security
        self.state_dir = Path(state_dir)
        self.name = name
        self.port = port
        self.metrics_port = metrics_port
        env = dict(os.environ)
        env.update(settings)
        env.update(
            {
                "ESPER_HOST": LOOPBACK,
                "ESPER_PORT": str(port),
                "ESPER_METRICS_PORT": str(metrics_port),
                "ESPER_STATE_DIR": str(self.state_dir),
                "PYTHONUNBUFFERED": "1",  # log lines reach the log file as they happen
            }
        )
        self.process = ManagedProcess(
            ProcessSpec(
                name=name,
                argv=[sys.executable, "-m", "esper.cli.main", "serve", service or name],
                log_path=log_path(self.state_dir, name),
                pid_path=pid_path(self.state_dir, name),
                env=env,
                cwd=self.state_dir,
                stop_grace_s=STOP_GRACE_S,
            )
        )

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    def launch(self) -> None:
        ensure_port_free(self.port, self.name)
        ensure_port_free(self.metrics_port, f"{self.name} metrics")
        self.process.start()

    def is_ready(self) -> bool:
        return health_check(self.address, security=self.security)
