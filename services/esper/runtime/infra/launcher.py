"""What every process of the local stack shares, infrastructure or Esper server: it listens
on 127.0.0.1:`port`, is launched without waiting, then probed with a real round trip until
it answers, and is stopped through its pid file."""

from __future__ import annotations

from esper.runtime.infra.errors import InfraError
from esper.runtime.infra.ports import LOOPBACK
from esper.runtime.infra.process import ManagedProcess


class LoopbackProcess:
    """Base of the stack's launchers; a subclass sets `process` and `port` and supplies
    `launch` (start without waiting) and `is_ready` (one probe)."""

    # What `wait_ready` waits for, in words: its timeout error says it.
    ready_what: str = "ready"
    # Seconds `wait_ready` allows when the caller does not say.
    ready_timeout_s: float = 30.0

    process: ManagedProcess
    port: int

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def launch(self) -> None:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def ensure_running(self, timeout_s: float | None = None) -> None:
        """Launch and wait until ready, unless it is running already."""
        if not self.process.is_running():
            self.launch()
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Probe until ready; on a timeout or an early exit, stop the process and raise."""
        timeout_s = self.ready_timeout_s if timeout_s is None else timeout_s
        try:
            self.process.wait_ready(self.is_ready, timeout_s, self.ready_what)
        except InfraError:
            self.stop()
            raise

    def stop(self) -> bool:
        return self.process.stop()
