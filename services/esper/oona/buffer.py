"""A bounded, thread-safe outbound buffer: O(1) offer that never waits, drops counted
when full. Pure logic, shared by the async and the threaded producer."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple


class OutboundRecord(NamedTuple):
    """One encoded event waiting to be sent (a tuple: built on the training thread for
    every event, and a frozen dataclass costs several times more to build)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


class OutboundBuffer:
    """Bounded FIFO. `offer` never blocks: when the buffer is full the record is dropped
    and counted. `on_ready` is called (outside the lock) when the buffer grows to
    `wake_at` records, so a sender can sleep until there is enough to send."""

    def __init__(
        self, capacity: int, on_ready: Callable[[], None] | None = None, wake_at: int = 1
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if not 1 <= wake_at <= capacity:
            raise ValueError("wake_at must be within [1, capacity]")
        self.capacity = capacity
        self.wake_at = wake_at
        self._items: deque[OutboundRecord] = deque()
        self._lock = threading.Lock()
        self._on_ready = on_ready
        self.accepted = 0
        self.dropped = 0

    def set_on_ready(self, on_ready: Callable[[], None] | None) -> None:
        self._on_ready = on_ready

    def offer(self, record: OutboundRecord) -> bool:
        with self._lock:
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            self._items.append(record)
            self.accepted += 1
            became_ready = len(self._items) == self.wake_at
        if became_ready and self._on_ready is not None:
            self._on_ready()
        return True

    def requeue(self, records: list[OutboundRecord]) -> int:
        """Put records taken earlier (and not delivered) back at the front, in their
        order, as far as there is room; returns how many did not fit (dropped: the
        oldest of them, so what is kept stays contiguous with what is buffered)."""
        with self._lock:
            room = max(0, self.capacity - len(self._items))
            kept = records[len(records) - room:] if room else []
            self._items.extendleft(reversed(kept))
        return len(records) - len(kept)

    def take(self, max_items: int) -> list[OutboundRecord]:
        with self._lock:
            count = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def fill_ratio(self) -> float:
        """Back-pressure: 0 when empty, 1 when the next offer will be dropped."""
        return len(self._items) / self.capacity
