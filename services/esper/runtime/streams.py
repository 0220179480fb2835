"""Limits on long-lived streams: at most `max_total` open at once on a server and at most
`max_per_client` for any one client (esper.runtime.peers.client_key), so one client cannot
hold all of a server's streams. A stream beyond either limit is refused at once with
RESOURCE_EXHAUSTED saying which limit; a slot is freed when its stream ends, however it ends.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from esper.runtime.errors import ResourceExhausted


class StreamSlots:
    def __init__(self, what: str, max_total: int, max_per_client: int) -> None:
        if max_total < 1 or max_per_client < 1:
            raise ValueError(f"{what}: stream limits must be >= 1")
        self.what, self.max_total, self.max_per_client = what, max_total, max_per_client
        self._open: Counter[str] = Counter()
        self.total = 0

    def open_for(self, client: str) -> int:
        return self._open[client]

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """Hold one slot for `client` while the block runs; ResourceExhausted when none is free."""
        if self.total >= self.max_total:
            raise ResourceExhausted(f"{self.what}: the server has {self.total} open streams, its limit; "
                                    "retry later")
        if self._open[client] >= self.max_per_client:
            raise ResourceExhausted(f"{self.what}: this client has {self._open[client]} open streams, "
                                    f"the limit per client; close one first")
        self._open[client] += 1
        self.total += 1
        try:
            yield
        finally:
            self.total -= 1
            self._open[client] -= 1
            if not self._open[client]:
                del self._open[client]
