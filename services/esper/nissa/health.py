"""Is Nissa's ingest making progress? One verdict over every ingest worker (or the
in-process ingest, worker 0), exported as Prometheus gauges that alerting watches:

- `esper_nissa_ingest_stalled_seconds`: how long the oldest batch still held has been
  failing to be stored (the database is away, or the broker refuses its dead letters);
- `esper_nissa_ingest_stuck`: 1 while the ingest is stuck — a batch held for
  STUCK_AFTER_S, or a worker that died STUCK_DEATHS times in a row without storing a
  batch (a crash loop) — else 0.

Bad records no longer stop the ingest (they are dead-lettered), so a stuck ingest means
a dependency is gone or a bug: both need a person, and nothing is stored meanwhile."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Gauge

log = logging.getLogger(__name__)

# A batch that cannot be stored for this long is no blip (the writer retries a database
# outage with backoff up to 5 s: several retries have failed by then).
STUCK_AFTER_S = 30.0
# Worker deaths in a row without a stored batch in between: a crash loop, not a crash.
STUCK_DEATHS = 3

STALLED = Gauge(
    "esper_nissa_ingest_stalled_seconds",
    "How long the oldest batch the ingest holds has been failing to be stored (0: none)",
    registry=REGISTRY,
)
STUCK = Gauge(
    "esper_nissa_ingest_stuck",
    "1 while the ingest makes no progress (a batch held too long, or a crash loop)",
    registry=REGISTRY,
)


class IngestHealth:
    """Progress of each ingest worker, by index, and the verdict over all of them."""

    def __init__(self) -> None:
        self._stalled: dict[int, float] = {}
        self._deaths: dict[int, int] = {}
        self._was_stuck = False

    def stalled(self, worker: int, seconds: float) -> None:
        """The worker's held batch has been failing for `seconds` (0: none held)."""
        self._stalled[worker] = max(0.0, seconds)
        self._export()

    def stored(self, worker: int) -> None:
        """The worker stored a batch: it is not in a crash loop."""
        self._deaths[worker] = 0
        self._export()

    def died(self, worker: int) -> None:
        """The worker process died (it will be restarted)."""
        self._deaths[worker] = self._deaths.get(worker, 0) + 1
        self._stalled[worker] = 0.0
        self._export()

    @property
    def stalled_s(self) -> float:
        return max(self._stalled.values(), default=0.0)

    @property
    def stuck(self) -> bool:
        return (self.stalled_s >= STUCK_AFTER_S
                or max(self._deaths.values(), default=0) >= STUCK_DEATHS)

    def _export(self) -> None:
        stuck = self.stuck
        STALLED.set(self.stalled_s)
        STUCK.set(1 if stuck else 0)
        if stuck != self._was_stuck:
            (log.error if stuck else log.info)(
                "nissa ingest %s", "is stuck: nothing is being stored" if stuck else "recovered",
                extra={"stalled_s": round(self.stalled_s, 1), "deaths": dict(self._deaths)})
            self._was_stuck = stuck
