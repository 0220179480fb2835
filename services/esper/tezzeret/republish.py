"""Re-publishing compile requests from the database.

Kafka is transport only (tansu keeps topics in memory): after a broker restart, or when a
publish failed while the broker was down, a job can be QUEUED (or half done by a worker
that died) with no request left on the topic. The sweeper finds open jobs that nobody
holds and whose request was last published long enough ago, and publishes them again.
Duplicates are harmless: workers skip finished jobs and wait out live leases.
"""

from __future__ import annotations

import asyncio
import logging

from esper.tezzeret.errors import DB_CONNECTION_ERRORS
from esper.tezzeret.jobs import JobStore
from esper.tezzeret.requests import RequestPublisher

log = logging.getLogger(__name__)


async def republish_stale(store: JobStore, publisher: RequestPublisher, older_than_s: float) -> int:
    """One sweep; returns how many requests were re-published."""
    stale = await store.stale(older_than_s)
    if not stale:
        return 0
    sent = await publisher.publish(stale)
    if sent:
        await store.mark_published(sent)
        log.info("tezzeret: re-published %d compile request(s) from the database", len(sent))
    return len(sent)


async def sweep_forever(store: JobStore, publisher: RequestPublisher, *, first_older_than_s: float,
                        older_than_s: float, interval_s: float) -> None:
    """Sweep at once for jobs unheld for `first_older_than_s` (a lease: a restarted broker
    lost their requests), then every `interval_s` for requests older than `older_than_s`."""
    threshold = first_older_than_s
    while True:
        try:
            await republish_stale(store, publisher, threshold)
        except DB_CONNECTION_ERRORS as exc:
            log.warning("tezzeret: republish sweep skipped, postgres unavailable: %s", exc)
        threshold = older_than_s
        await asyncio.sleep(interval_s)
