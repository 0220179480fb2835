"""Kernel candidates from Urza's SearchKernels, fetched before a policy decides (policies
are synchronous; the provider they get holds the answers). Unreachable or slow Urza gives a
provider with `unavailable_reason` set, so the policy does not germinate and says why.

Answers are cached per (shape, budget, capabilities) for `cache_s`; the cache is dropped
whenever Urza's catalogue changes (a background WatchCatalog stream, re-opened after
failures), so kernels Tezzeret registers mid-run are offered at the next decision. Empty
answers are kept only `EMPTY_CACHE_S` in case the watch stream is down."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import grpc

from esper.leyline.v1.signals_pb2 import ModelGraph, SlotInfo
from esper.leyline.v1.tamiyo_pb2 import Capabilities, ResourceBudget
from esper.leyline.v1.telemetry_pb2 import FieldReport
from esper.leyline.v1.urza_pb2 import CostBudget, KernelCandidate, SearchKernelsRequest
from esper.rpc.clients import UrzaClient
from esper.rpc.errors import ServiceError

log = logging.getLogger("esper.tamiyo.urza")

# Candidates asked per slot shape: policies choose among a handful; Urza ranks them.
SEARCH_LIMIT = 20
# Distinct (shape, budget, capabilities) searches cached; past this the cache starts over.
CACHE_ENTRIES = 1024
# After a failed search, seconds during which decisions go on without Urza instead of each
# waiting for another timeout.
OUTAGE_BACKOFF_S = 5.0
# Field reports in flight to Urza at once; beyond it they are only kept in the run state.
MAX_FORWARDS = 256
# Retry backoff of a field report Urza did not take (first and longest wait, seconds), and
# how long one report is retried before it is given up (logged): an Urza restart or a
# short outage is ridden out; an Urza away for longer loses the report to its aggregates
# (it stays in the run's history in Nissa, which Simic trains from).
FORWARD_BACKOFF_S = (0.5, 30.0)
FORWARD_GIVE_UP_S = 600.0
# Answers worth a retry besides "not there" (UNAVAILABLE, DEADLINE_EXCEEDED): Urza's
# per-identity quota on field reports, and a write that lost a race.
RETRY_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})
# Seconds an empty search answer is reused: kernels may be registered any moment (compiles
# Tamiyo requested), and the catalogue watch that drops the cache may be down.
EMPTY_CACHE_S = 2.0
# Backoff of the catalogue watch stream after a failure: first and longest wait (seconds).
WATCH_BACKOFF_S = (0.5, 10.0)


class FetchedCandidates:
    """A CandidateProvider over answers already fetched, keyed by slot id."""

    def __init__(self, per_slot: dict[str, list[KernelCandidate]], unavailable: str | None = None) -> None:
        self._per_slot = per_slot
        self._unavailable = unavailable

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable

    def candidates(self, slot: SlotInfo, budget: ResourceBudget) -> list[KernelCandidate]:
        return list(self._per_slot.get(slot.slot_id, ()))

    def empty_slots(self, graph: ModelGraph) -> list[str]:
        """Slot ids of `graph` for which Urza offered no kernel."""
        return [s.slot_id for s in graph.slots if not self._per_slot.get(s.slot_id)]

    def without_kernels(self, reason: str) -> FetchedCandidates:
        """The same (empty) answers, with `reason` as why nothing can be germinated."""
        return FetchedCandidates(self._per_slot, reason)


def _search_request(slot: SlotInfo, caps: Capabilities, budget: ResourceBudget) -> SearchKernelsRequest:
    return SearchKernelsRequest(
        shape=slot.shape, device=caps.device or "cpu", capabilities=list(caps.tags), limit=SEARCH_LIMIT,
        budget=CostBudget(max_flops=budget.max_seed_flops, max_latency_ms=budget.max_seed_latency_ms,
                          max_memory_bytes=budget.max_seed_memory_bytes, max_risk=budget.max_risk),
    )


class UrzaCandidates:
    """Searches Urza per distinct slot shape, with a short cache and a deadline."""

    def __init__(self, address: str, timeout_s: float, cache_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._urza = UrzaClient(address, timeout_s=timeout_s) if address else None
        self._cache: dict[bytes, tuple[float, list[KernelCandidate]]] = {}
        self._outage: tuple[float, str] | None = None  # (until, reason)
        self._forwards: set[asyncio.Task] = set()
        self._watch: asyncio.Task | None = None
        self.catalog_changes = 0  # catalogue events seen (each one dropped the cache)
        self.reports_recorded = 0  # field reports Urza took
        self.reports_lost = 0  # field reports refused, or given up after FORWARD_GIVE_UP_S

    def start_watch(self) -> None:
        """Start the background catalogue watch (needs a running event loop)."""
        if self._urza is not None and self._watch is None:
            self._watch = asyncio.create_task(self._watch_catalog())

    async def _watch_catalog(self) -> None:
        assert self._urza is not None
        backoff = WATCH_BACKOFF_S[0]
        while True:
            try:
                async for _ in self._urza.watch_catalog():
                    self._cache.clear()
                    self.catalog_changes += 1
                    backoff = WATCH_BACKOFF_S[0]
            except ServiceError as exc:
                log.debug("catalogue watch interrupted", extra={"urza": self.address, "code": exc.code.name})
            self._cache.clear()  # changes may have been missed while the stream was down
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, WATCH_BACKOFF_S[1])

    def forward_field_report(self, report: FieldReport) -> None:
        """Send a seed's outcome to Urza's blueprint aggregates in the background (the
        session never waits on it), retried while Urza is away or over its quota. Retries
        are idempotent: Urza records a report once per (run_id, seed_id) and ignores it
        again, also when an earlier try did land but its answer was lost."""
        if self._urza is None or not report.blueprint_ref or len(self._forwards) >= MAX_FORWARDS:
            return
        task = asyncio.create_task(self._forward(report))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _forward(self, report: FieldReport) -> None:
        assert self._urza is not None
        give_up = time.monotonic() + FORWARD_GIVE_UP_S
        backoff = FORWARD_BACKOFF_S[0]
        while True:
            try:
                await self._urza.record_field_report(report, timeout_s=self.timeout_s * 5)
                self.reports_recorded += 1
                return
            except ServiceError as exc:
                retry = exc.unreachable or exc.code in RETRY_CODES
                if not retry or time.monotonic() + backoff > give_up:
                    self.reports_lost += 1
                    log.warning("field report not recorded in Urza", extra={
                        "run_id": report.run_id, "seed_id": report.seed_id,
                        "code": exc.code.name, "detail": exc.details, "retried": retry})
                    return
                log.info("field report not taken by Urza yet; retrying", extra={
                    "run_id": report.run_id, "seed_id": report.seed_id, "code": exc.code.name,
                    "backoff_s": backoff})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, FORWARD_BACKOFF_S[1])

    async def close(self) -> None:
        for task in [*self._forwards, *([self._watch] if self._watch else [])]:
            task.cancel()
        if self._urza is not None:
            await self._urza.close()

    async def fetch(self, graph: ModelGraph, caps: Capabilities, budget: ResourceBudget) -> FetchedCandidates:
        if self._urza is None:
            return FetchedCandidates({}, "no Urza configured (urza_address is empty), so no kernels are known")
        if self._outage is not None and time.monotonic() < self._outage[0]:
            return FetchedCandidates({}, self._outage[1])
        requests = {s.slot_id: _search_request(s, caps, budget) for s in graph.slots}
        # Digests, not the bytes: cache keys are kept, and capabilities carry client strings.
        keys = {sid: hashlib.sha256(r.SerializeToString(deterministic=True)).digest()
                for sid, r in requests.items()}
        distinct = {keys[sid]: requests[sid] for sid in requests}
        try:
            answers = dict(zip(distinct, await asyncio.gather(*(self._search(k, r) for k, r in distinct.items())),
                               strict=True))
        except ServiceError as exc:
            reason = f"Urza at {self.address} is unreachable ({exc.code.name}: {exc.details})"
            log.warning("kernel search failed", extra={"urza": self.address, "code": exc.code.name})
            self._outage = (time.monotonic() + OUTAGE_BACKOFF_S, reason)
            return FetchedCandidates({}, reason)
        self._outage = None
        return FetchedCandidates({sid: answers[keys[sid]] for sid in requests})

    async def _search(self, key: bytes, request: SearchKernelsRequest) -> list[KernelCandidate]:
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < (self.cache_s if hit[1] else min(self.cache_s, EMPTY_CACHE_S)):
            return hit[1]
        assert self._urza is not None
        found = await self._urza.search_kernels(request)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = (now, found)
        return found
