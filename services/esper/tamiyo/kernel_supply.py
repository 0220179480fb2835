"""Kernels on demand: Tamiyo asks Tezzeret to compile the built-in blueprints that suit a
run's slots, so a fresh stack (blueprints in Urza, no kernels yet) can still grow seeds.

When a session opens (and whenever a decision finds a slot without any VALID kernel),
`KernelSupply.ensure(graph, capabilities)` starts a background task, never awaited by the
session, that:

1. collects the run's distinct slot shapes (kind, channels and the spatial/sequence
   dimensions Tezzeret builds for) as `KernelTarget`s on the session's device and dtype;
2. picks the suitable built-in blueprints per shape: the slot kind is one the blueprint
   supports, every capability it requires is among the session's tags, it is a growth
   family (diagnostic blueprints add no capacity) and its graph resolves for the shape;
3. asks Urza (`ListKernels`) which of those kernels exist already, and submits one
   `SubmitCompile(blueprint_ref, [target])` per missing (blueprint, target) pair, lowest
   risk first, so the likeliest picks are compiled first.

It is idempotent: a pair is submitted once per Tamiyo process (Tezzeret also returns the
live job of an equal request instead of queueing another), a pair Tezzeret refuses
(INVALID_ARGUMENT / FAILED_PRECONDITION) is not asked for again, and a pair that failed
because Tezzeret or Urza was unreachable is retried after `RETRY_AFTER_S`. Candidates
appear once Tezzeret has registered the kernels: Tamiyo's candidate cache is dropped on
every catalogue change (`urza_candidates.UrzaCandidates` watches Urza's WatchCatalog).

`reason()` says, for a decision's rationale, why no kernel is there yet (compiles pending,
or Tezzeret unreachable / not configured).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

import grpc
from prometheus_client import REGISTRY, Counter

from esper.blueprints import BlueprintError, builtin_blueprints, resolve_for_shape
from esper.blueprints.catalog import OPT_IN_FAMILIES
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2, kernel_pb2, urza_pb2
from esper.leyline.v1.signals_pb2 import ModelGraph
from esper.leyline.v1.tamiyo_pb2 import Capabilities
from esper.rpc.clients import TezzeretClient, UrzaClient
from esper.rpc.errors import ServiceError

log = logging.getLogger("esper.tamiyo.kernel_supply")

COMPILE_REQUESTS = Counter("esper_tamiyo_compile_requests_total",
                           "Compile requests Tamiyo sent to Tezzeret, by outcome", ["outcome"],
                           registry=REGISTRY)

# SubmitCompile calls in flight at once: each is a few database writes in Tezzeret; a
# handful keeps a run's dozens of requests quick without flooding it.
SUBMIT_CONCURRENCY = 4
# Seconds before pairs that failed on an unreachable Tezzeret or Urza are asked for again.
RETRY_AFTER_S = 10.0
# ListKernels page size when checking which kernels exist (Urza's cap).
LIST_PAGE_SIZE = 1000
# Status codes meaning "this request will never succeed": do not ask again.
REFUSALS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                      grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS})
# Distinct (graph, capabilities) whose wanted pairs are remembered; past this, start over.
WANTED_ENTRIES = 256
# Dimensions of a SlotShape a kernel is built for, besides kind and channels.
SHAPE_DIMS = ("length", "height", "width")


@dataclass(frozen=True)
class Pair:
    """One kernel to have: a blueprint built for one target."""

    blueprint_ref: str
    target: bytes  # KernelTarget, serialized deterministically (hashable)

    def target_proto(self) -> kernel_pb2.KernelTarget:
        return kernel_pb2.KernelTarget.FromString(self.target)


def targets_for(graph: ModelGraph, caps: Capabilities) -> list[kernel_pb2.KernelTarget]:
    """One KernelTarget per distinct slot shape, on the session's device and dtype."""
    dtype = caps.dtype or common_pb2.DTYPE_FLOAT32
    seen: dict[bytes, kernel_pb2.KernelTarget] = {}
    for slot in graph.slots:
        shape = common_pb2.SlotShape(kind=slot.shape.kind, channels=slot.shape.channels)
        for dim in SHAPE_DIMS:
            setattr(shape, dim, getattr(slot.shape, dim))
        target = kernel_pb2.KernelTarget(device=caps.device or "cpu", dtype=dtype, shape=shape)
        seen.setdefault(target.SerializeToString(deterministic=True), target)
    return list(seen.values())


def suitable(spec: bp.BlueprintSpec, shape: common_pb2.SlotShape, tags: set[str]) -> bool:
    """Whether a built-in blueprint can grow a seed in a slot of `shape` for this session."""
    if spec.family in OPT_IN_FAMILIES or shape.kind not in spec.slot_kinds:
        return False
    if not set(spec.metadata.requires_capability) <= tags:
        return False
    try:
        resolve_for_shape(spec, shape)
    except BlueprintError:
        return False
    return True


def wanted_pairs(graph: ModelGraph, caps: Capabilities,
                 specs: list[bp.BlueprintSpec] | None = None) -> list[Pair]:
    """Every (built-in blueprint, target) this run could use, lowest risk first."""
    specs = sorted(specs if specs is not None else builtin_blueprints(),
                   key=lambda s: (s.metadata.risk_score, s.name))
    tags = set(caps.tags)
    targets = targets_for(graph, caps)
    return [Pair(f"{s.name}@{s.version}", t.SerializeToString(deterministic=True))
            for s in specs for t in targets if suitable(s, t.shape, tags)]


def _key(ref: str, device: str, kind: int, channels: int) -> tuple[str, str, int, int]:
    return ref, device, kind, channels


class KernelSupply:
    """Background compile requests to Tezzeret for the kernels a run's slots need."""

    def __init__(self, tezzeret_address: str, urza_address: str, timeout_s: float) -> None:
        self.address = tezzeret_address
        self.timeout_s = timeout_s
        self._tezzeret = TezzeretClient(tezzeret_address, timeout_s=timeout_s) if tezzeret_address else None
        self._urza = (UrzaClient(urza_address, timeout_s=timeout_s)
                      if urza_address and tezzeret_address else None)
        self._done: set[Pair] = set()  # submitted, present already, or refused for good
        self._failed: dict[Pair, float] = {}  # pair -> monotonic time it may be retried
        self._error: str | None = None  # why the last attempt could not reach Tezzeret/Urza
        self._submitted = 0  # compile jobs this process asked Tezzeret for
        self._tasks: set[asyncio.Task] = set()
        self._running: set[bytes] = set()  # graphs+capabilities being worked on
        self._wanted: dict[bytes, list[Pair]] = {}  # graph+capabilities -> its pairs
        self._semaphore = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    @property
    def enabled(self) -> bool:
        return self._tezzeret is not None

    def ensure(self, graph: ModelGraph, caps: Capabilities) -> None:
        """Start (without waiting) the compile requests this run's slots still need."""
        if not self.enabled:
            return
        # A digest, not the bytes: a graph may be a megabyte, and keys are kept.
        key = hashlib.sha256(graph.SerializeToString(deterministic=True)
                             + caps.SerializeToString(deterministic=True)).digest()
        if key in self._running:
            return
        wanted = self._wanted.get(key)
        if wanted is None:
            if len(self._wanted) >= WANTED_ENTRIES:
                self._wanted.clear()
            wanted = self._wanted[key] = wanted_pairs(graph, caps)
        pairs = [p for p in wanted if self._due(p)]
        if not pairs:
            return
        self._running.add(key)
        task = asyncio.create_task(self._supply(pairs, caps.device or "cpu"))
        self._tasks.add(task)
        task.add_done_callback(lambda t: (self._tasks.discard(t), self._running.discard(key)))

    def reason(self) -> str:
        """Why a run may have no kernels yet, for a decision's rationale."""
        if not self.enabled:
            return "no Tezzeret is configured (tezzeret_address is empty) to compile any"
        if self._error:
            return f"none can be compiled now: {self._error}"
        if self._tasks or self._submitted:
            return (f"{self._submitted} kernel compiles were requested from Tezzeret at "
                    f"{self.address}; none fitting these slots is registered in Urza yet")
        return "no built-in blueprint suits these slots"

    def _due(self, pair: Pair) -> bool:
        if pair in self._done:
            return False
        retry_at = self._failed.get(pair)
        return retry_at is None or time.monotonic() >= retry_at

    async def _supply(self, pairs: list[Pair], device: str) -> None:
        try:
            present = await self._existing(pairs, device)
        except ServiceError as exc:
            self._fail(pairs, f"Urza is unreachable to list kernels ({exc.code.name}: {exc.details})")
            return
        missing = []
        for pair in pairs:
            t = pair.target_proto()
            if _key(pair.blueprint_ref, device, t.shape.kind, t.shape.channels) in present:
                self._done.add(pair)
            else:
                missing.append(pair)
        if missing:
            log.info("requesting kernel compiles", extra={"tezzeret": self.address, "kernels": len(missing)})
        await asyncio.gather(*(self._submit(p) for p in missing))

    async def _existing(self, pairs: list[Pair], device: str) -> set[tuple[str, str, int, int]]:
        """(blueprint, device, kind, channels) of the VALID kernels Urza has for these pairs."""
        assert self._urza is not None
        found: set[tuple[str, str, int, int]] = set()
        for channels in sorted({p.target_proto().shape.channels for p in pairs}):
            request = urza_pb2.ListKernelsRequest(device=device, channels=channels,
                                                  state=kernel_pb2.KERNEL_STATE_VALID,
                                                  page_size=LIST_PAGE_SIZE)
            async for k in self._urza.list_kernels(request):
                found.add(_key(k.blueprint_ref, k.target.device, k.target.shape.kind, k.target.shape.channels))
        return found

    async def _submit(self, pair: Pair) -> None:
        assert self._tezzeret is not None
        async with self._semaphore:
            try:
                job = await self._tezzeret.submit(pair.blueprint_ref, [pair.target_proto()])
            except ServiceError as exc:
                self._answered(pair, exc)
                return
        self._done.add(pair)
        self._failed.pop(pair, None)
        self._error = None
        self._submitted += 1
        COMPILE_REQUESTS.labels(outcome="submitted").inc()
        log.info("kernel compile requested", extra={"blueprint_ref": pair.blueprint_ref,
                                                    "job_id": job.job_id})

    def _answered(self, pair: Pair, exc: ServiceError) -> None:
        if exc.code in REFUSALS:
            self._done.add(pair)  # this blueprint cannot be built for this target here
            COMPILE_REQUESTS.labels(outcome="refused").inc()
            log.info("kernel compile refused", extra={"blueprint_ref": pair.blueprint_ref,
                                                      "code": exc.code.name, "detail": exc.details})
            return
        self._fail([pair], f"Tezzeret at {self.address} is unreachable ({exc.code.name}: {exc.details})")

    def _fail(self, pairs: list[Pair], error: str) -> None:
        retry_at = time.monotonic() + RETRY_AFTER_S
        for pair in pairs:
            self._failed[pair] = retry_at
        if self._error != error:
            log.warning("kernel compiles not requested", extra={"error": error, "kernels": len(pairs)})
        self._error = error
        COMPILE_REQUESTS.labels(outcome="unreachable").inc(len(pairs))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in (self._tezzeret, self._urza):
            if client is not None:
                await client.close()
