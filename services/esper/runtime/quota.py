"""Per-identity rate quotas (compile jobs, field reports): each identity may spend at most
`limit` units per `window_s`, refilled continuously (a token bucket), so a burst up to the
limit passes and a flood is refused with RESOURCE_EXHAUSTED saying when to retry.

Identities come from esper.runtime.auth.caller(); with auth off every caller is
`anonymous` and shares one bucket, which still bounds a flood. The table of identities is
bounded too (least recently seen forgotten first), so inventing names buys nothing.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from esper.runtime.errors import ResourceExhausted

MAX_IDENTITIES = 10_000


class RateQuota:
    def __init__(self, what: str, limit: int, window_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"{what}: a quota needs limit >= 1 and window_s > 0")
        self.what, self.limit, self.window_s, self.clock = what, limit, window_s, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def _tokens(self, identity: str, now: float) -> float:
        tokens, at = self._buckets.get(identity, (float(self.limit), now))
        return min(float(self.limit), tokens + (now - at) * self.limit / self.window_s)

    def take(self, identity: str, units: int = 1) -> None:
        """Spend `units` of `identity`'s quota, or raise ResourceExhausted (nothing spent)."""
        now = self.clock()
        tokens = self._tokens(identity, now)
        if tokens < units:
            wait = math.ceil((units - tokens) * self.window_s / self.limit)
            raise ResourceExhausted(
                f"{self.what}: quota of {self.limit} per {self.window_s:g} s for {identity!r} "
                f"is used up; retry in {wait} s")
        self._buckets[identity] = (tokens - units, now)
        self._buckets.move_to_end(identity)
        while len(self._buckets) > MAX_IDENTITIES:
            self._buckets.popitem(last=False)
