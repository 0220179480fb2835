"""One server as several processes on one port (`processes` > 1): each process binds the
port with SO_REUSEPORT and the kernel hands every new connection to one of them; the
connection, and every stream on it, stays with that process. A process is one event loop:
this is how one server uses more than one core.

The process `esper serve` started supervises them: it checks the port is free (and picks
it, for port 0), starts the processes (`python -m esper.runtime.processes`, its config as
one JSON line on stdin, armed to get SIGTERM if the supervisor dies), waits until each
serves, forwards SIGTERM/SIGINT to them and restarts one that dies. Each process has its
own state: a service that keeps state a client may come back for must keep it where every
process finds it (Tamiyo requires `postgres_dsn`, as its replicas do).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from esper.runtime.config import ConfigError, ServerConfig, coerce
from esper.runtime.infra.process import with_death_signal
from esper.runtime.logs import configure_logging
from esper.runtime.registry import load_spec
from esper.runtime.server import RunningServer, ServiceSpec, StartupError, serve_forever

log = logging.getLogger("esper.runtime.processes")

MAX_PROCESSES = 64
# A process imports its libraries (torch for Tamiyo) and connects its dependencies before
# it serves: slow on a loaded machine.
START_TIMEOUT_S = 120.0
# How often the supervisor looks for a process that died.
WATCH_S = 0.5
# A process that died is restarted after this long (a crash loop costs little).
RESTART_DELAY_S = 1.0
# Beyond its shutdown grace, how long a process may take to exit before SIGKILL.
STOP_MARGIN_S = 10.0
EXIT_STARTUP = 2


@dataclass(frozen=True)
class ProcessesSettings:
    # Server processes sharing this port (SO_REUSEPORT: the kernel gives each new connection
    # to one of them), each its own event loop; 1: this process alone. With a fixed
    # metrics_port, process i serves /metrics on metrics_port + i.
    processes: int = 1

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ConfigError(f"processes: {self.processes!r} must be within [1, {MAX_PROCESSES}]")
        metrics_port = self.metrics_port  # type: ignore[attr-defined]
        if metrics_port > 0 and metrics_port + self.processes - 1 > 65535:
            raise ConfigError(f"processes: {self.processes} processes need metrics ports "
                              f"{metrics_port}-{metrics_port + self.processes - 1}, beyond 65535")


def serves_in_processes(config: ServerConfig) -> bool:
    return isinstance(config, ProcessesSettings) and config.processes > 1


def claim_port(host: str, port: int) -> int:
    """The port the processes will share: `port`, or a free one for 0; StartupError when
    something already listens on it (binding it with SO_REUSEPORT would not refuse a
    server left behind that set it too)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family) as probe:
            return probe.getsockname()[1]
    except OSError as exc:
        raise StartupError(f"port: cannot bind {host}:{port}: {exc}") from None


def process_config(config: ServerConfig, port: int, index: int) -> ServerConfig:
    """What process `index` serves with: the shared port, its own metrics port."""
    metrics_port = config.metrics_port + index if config.metrics_port > 0 else config.metrics_port
    return dataclasses.replace(config, port=port, metrics_port=metrics_port, processes=1)


def config_line(service: str, config: ServerConfig) -> bytes:
    """The JSON line a process reads on its stdin."""
    return json.dumps({"service": service, "config": dataclasses.asdict(config)}).encode() + b"\n"


def parse_config_line(line: bytes) -> tuple[ServiceSpec, ServerConfig]:
    """The service and its validated config from a config line; ConfigError if not one."""
    try:
        setup = json.loads(line)
        spec = load_spec(setup["service"])
        cls = spec.config_cls
        config = cls(**{name: coerce(cls, name, value, "the supervisor") for name, value in setup["config"].items()})
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"process setup: not a config line: {exc}") from None
    config.validate()
    return spec, config


class SharedPortProcess:
    """One process of the server: started, waited for until it serves, stopped."""

    def __init__(self, spec: ServiceSpec, config: ServerConfig, index: int) -> None:
        self.spec, self.config, self.index = spec, config, index
        self.metrics_port = -1
        argv = with_death_signal([sys.executable, "-m", "esper.runtime.processes"], signal.SIGTERM)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdin is not None
        self.proc.stdin.write(config_line(spec.name, config))
        self.proc.stdin.close()

    def wait_serving(self) -> None:
        """Returns once the process serves; StartupError with its reason when it cannot."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT_S)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        self.proc.stdout.close()
        kind, _, detail = line.partition(" ")
        if kind == "serving":
            self.metrics_port = int(detail)
            return
        self.kill()
        if kind == "error":
            reason = detail
        elif not ready:
            reason = f"it did not serve within {START_TIMEOUT_S:g} s"
        else:
            reason = f"it exited with {self.proc.returncode} (its log says why)"
        raise StartupError(f"processes: process {self.index} of {self.spec.name}: {reason}")

    def exited(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def join(self, timeout_s: float) -> None:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def serve_processes(spec: ServiceSpec, config: ServerConfig) -> int:
    """Serve `spec` as `config.processes` processes on one port until SIGTERM/SIGINT; 0
    then. StartupError when one cannot start (none is left running)."""
    configure_logging(config.log_format, config.log_level)
    port = claim_port(config.host, config.port)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: stopping.append(received))
    processes = [SharedPortProcess(spec, process_config(config, port, i), i) for i in range(config.processes)]
    try:
        for process in processes:
            process.wait_serving()
    except BaseException:
        for process in processes:
            process.kill()
        raise
    metrics = ",".join(f":{p.metrics_port}" for p in processes)
    print(f"{spec.name} serving on {config.host}:{port} ({len(processes)} processes, metrics {metrics})", flush=True)
    while not stopping:
        time.sleep(WATCH_S)
        for i, process in enumerate(processes):
            code = process.exited()
            if code is None or stopping:
                continue
            log.error("server process died; restarting it",
                      extra={"service": spec.name, "index": i, "exit_code": code})
            time.sleep(RESTART_DELAY_S)
            processes[i] = SharedPortProcess(spec, process.config, i)
            try:
                processes[i].wait_serving()
            except StartupError:
                _stop(processes, config.shutdown_grace_seconds)
                raise
    _stop(processes, config.shutdown_grace_seconds)
    return 0


def _stop(processes: list[SharedPortProcess], grace_s: float) -> None:
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s + STOP_MARGIN_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))


def main() -> int:
    """One process of a server: its config line on stdin; one line on stdout once it
    serves ("serving METRICS_PORT") or cannot ("error REASON"); logs on stderr."""
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes where the logs go

    def serving(running: RunningServer) -> None:
        report.write(f"serving {running.metrics_port}\n")
        report.close()

    try:
        spec, config = parse_config_line(sys.stdin.buffer.readline())
        asyncio.run(serve_forever(spec, config, reuse_port=True, on_serving=serving))
    except (ConfigError, StartupError) as exc:
        if not report.closed:
            report.write(f"error {exc}\n")
            report.close()
        return EXIT_STARTUP
    return 0


if __name__ == "__main__":
    sys.exit(main())
