"""Kernels for germination, local or from Urza, always through Kasmina's KernelCache.

- `LocalKernels` builds every built-in blueprint that fits a slot with the shared builder,
  packs it with `esper.blueprints.artifact` (deterministic bytes, so the same kernel id in
  every process) and puts the verified bytes in the cache. It is also the candidate
  provider of the local policy: no server is needed to grow a model.
- `UrzaKernelFetcher` downloads a kernel with `esper.rpc.clients.UrzaClient.download_kernel`;
  the cache calls it from its prefetch threads and verifies the SHA-256, so a germination
  never waits on the network inside a training step.
"""

from __future__ import annotations

import threading

import torch

from esper.blueprints.artifact import kernel_id_for, pack_kernel, sha256_hex
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import OPT_IN_FAMILIES, builtin_blueprints
from esper.blueprints.graph import estimate_flops, estimate_params
from esper.kasmina import KernelCache
from esper.kasmina.widen import widen_request
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2, kernel_pb2
from esper.leyline.v1.signals_pb2 import SlotInfo
from esper.leyline.v1.tamiyo_pb2 import ResourceBudget
from esper.leyline.v1.urza_pb2 import KernelCandidate

# Seed of the builder's private RNG for local kernels: fixed, so a kernel's bytes (and id)
# are the same in every process and a checkpoint can name it.
LOCAL_KERNEL_SEED = 0
# Chunk size asked of Urza's download stream: large enough for few messages, well under
# gRPC's default 4 MiB message limit.
DOWNLOAD_CHUNK_BYTES = 1 << 20
# Seconds a kernel download may take before the germination waits for a later attempt.
DOWNLOAD_TIMEOUT_S = 30.0


def spec_ref(spec: bp.BlueprintSpec) -> str:
    return f"{spec.name}@{spec.version}"


def _shape_key(shape: common_pb2.SlotShape) -> tuple[int, int, int, bool]:
    return shape.kind, shape.channels, shape.widen_params_per_unit, shape.causal


class LocalKernels:
    """The built-in catalogue as real kernels in a KernelCache, built lazily per slot shape.
    A CandidateProvider for the Tamiyo heuristic policy."""

    def __init__(self, cache: KernelCache, specs: list[bp.BlueprintSpec] | None = None,
                 blueprints: list[str] | None = None) -> None:
        self.cache = cache
        specs = list(specs if specs is not None else builtin_blueprints())
        if blueprints is not None:
            wanted = set(blueprints)
            unknown = wanted - {spec_ref(s) for s in specs} - {s.name for s in specs}
            if unknown:
                raise ValueError(f"unknown blueprints {sorted(unknown)}; built-in: "
                                 f"{sorted(spec_ref(s) for s in specs)}")
            specs = [s for s in specs if spec_ref(s) in wanted or s.name in wanted]
        else:
            specs = [s for s in specs if s.family not in OPT_IN_FAMILIES]
        self.specs = specs
        self.catalog = {spec_ref(s): s for s in specs}
        self._by_shape: dict[tuple, list[KernelCandidate]] = {}

    @property
    def unavailable_reason(self) -> str | None:
        return None if self.specs else "the local blueprint list is empty"

    def candidates(self, slot: SlotInfo, budget: ResourceBudget) -> list[KernelCandidate]:
        return list(self.kernels_for(slot.shape))

    def kernels_for(self, shape: common_pb2.SlotShape) -> list[KernelCandidate]:
        """Every built-in kernel for `shape`, building (and caching) them on first use."""
        key = _shape_key(shape)
        if key not in self._by_shape:
            self._by_shape[key] = [c for c in (self._build(s, shape) for s in self.specs
                                               if shape.kind in s.slot_kinds) if c is not None]
        return self._by_shape[key]

    def _build(self, spec: bp.BlueprintSpec, shape: common_pb2.SlotShape) -> KernelCandidate | None:
        target = kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT32,
                                         shape=shape, torch_version=torch.__version__)
        try:
            module = build_seed(spec, shape, seed=LOCAL_KERNEL_SEED)
            data = pack_kernel(spec, shape, module, target=target)
        except Exception:  # noqa: BLE001 - a blueprint that cannot be built here is not offered
            return None
        digest = sha256_hex(data)
        kernel_id = kernel_id_for(digest)
        self.cache.put(kernel_id, data, digest)
        # A width kernel holds no weights (Kasmina makes them from the host's layers): its
        # size is the widening's, from the slot's parameters per unit.
        params = (estimate_params(spec, shape.channels, shape.widen_params_per_unit)
                  if widen_request(module) else
                  sum(p.numel() for p in module.parameters() if p.requires_grad))
        artifact = kernel_pb2.KernelArtifact(
            kernel_id=kernel_id, blueprint_ref=spec_ref(spec),
            format=kernel_pb2.KERNEL_FORMAT_SAFETENSORS, uri=f"local:{kernel_id}",
            sha256=digest, size_bytes=len(data), state=kernel_pb2.KERNEL_STATE_VALID,
            stats=kernel_pb2.KernelStats(params=params,
                                         flops=_flops(spec, shape)),
            target=target,
        )
        return KernelCandidate(kernel=artifact, blueprint=spec, score=1.0)

    def find(self, blueprint_ref: str, shape: common_pb2.SlotShape) -> KernelCandidate:
        """The local kernel of `blueprint_ref` for `shape`; KeyError when none."""
        for cand in self.kernels_for(shape):
            if cand.kernel.blueprint_ref == blueprint_ref:
                return cand
        raise KeyError(f"no local kernel of {blueprint_ref!r} for slot kind {shape.kind} "
                       f"with {shape.channels} channels")


def _flops(spec: bp.BlueprintSpec, shape: common_pb2.SlotShape) -> int:
    """Forward FLOPs of one example of the slot's shape, as KernelStats.flops means (and as
    Tezzeret measures a compiled kernel): the blueprint's per-position estimate times the
    slot's positions (pixels of a conv map, tokens of a sequence; 1 for features)."""
    try:
        per_position = int(estimate_flops(spec, shape.channels, shape.widen_params_per_unit))
    except Exception:  # noqa: BLE001 - unknown cost is reported as 0, never fatal
        return 0
    return per_position * _positions(shape)


def _positions(shape: common_pb2.SlotShape) -> int:
    if shape.kind == common_pb2.SLOT_KIND_CONV2D:
        return max(1, shape.height) * max(1, shape.width)
    if shape.kind in (common_pb2.SLOT_KIND_SEQUENCE, common_pb2.SLOT_KIND_CONV1D):
        return max(1, shape.length)
    return 1


class UrzaKernelFetcher:
    """`fetch(kernel_id) -> bytes` with UrzaClient.download_kernel (blocking; the
    KernelCache runs it in its prefetch threads, never on the training thread). The client
    lives on one event loop of its own thread (esper.rpc.loop.LoopThread), made at the
    first fetch and reused by every later one, whichever thread calls. A failed call
    raises `esper.rpc.errors.ServiceError`; bytes that do not match Urza's digest,
    ValueError."""

    def __init__(self, address: str, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
        from esper.rpc.channels import ChannelSecurity, open_channel

        self.address = address
        self.timeout_s = timeout_s
        self.security = ChannelSecurity.from_env()
        # Refuse a bad address or settings here, not at the first germination (a channel
        # connects lazily: this one never does).
        open_channel(address, security=self.security, aio=False).close()
        self._lock = threading.Lock()
        self._loop = None  # LoopThread, made at the first fetch
        self._urza = None  # UrzaClient, made on that loop

    def __call__(self, kernel_id: str) -> bytes:
        return self._loop_thread().run(self._download(kernel_id))

    def _loop_thread(self):
        from esper.rpc.loop import LoopThread

        with self._lock:
            if self._loop is None:
                self._loop = LoopThread("esper-kernel-fetch")
            return self._loop

    async def _download(self, kernel_id: str) -> bytes:
        from esper.rpc.clients import UrzaClient

        if self._urza is None:  # only ever touched on the fetch loop's thread
            self._urza = UrzaClient(self.address, security=self.security,
                                    timeout_s=self.timeout_s)
        return await self._urza.download_kernel(kernel_id, chunk_bytes=DOWNLOAD_CHUNK_BYTES)

    def close(self) -> None:
        """Close the client and stop its loop (a later fetch starts them again)."""
        with self._lock:
            loop, urza, self._loop, self._urza = self._loop, self._urza, None, None
        if loop is not None:
            loop.close(urza.close() if urza is not None else None)
