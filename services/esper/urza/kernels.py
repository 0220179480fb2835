"""The kernel registry: register (after verifying the stored bytes, or right after
UploadKernel stored them), read, list, and invalidate kernels whose bytes no longer match
their digest."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import asyncpg

from esper.blueprints.attrs import MAX_DIM
from esper.blueprints.errors import BlueprintError
from esper.blueprints.graph import validate_slot_shape
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.runtime import pagination
from esper.urza import records, validate
from esper.urza.db import Database
from esper.urza.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from esper.urza.events import CatalogFeed, record_event
from esper.urza.metrics import KERNELS_INVALIDATED
from esper.urza.store import KernelStore, ObjectMissing

log = logging.getLogger(__name__)

# Largest kernel artifact accepted: seeds are small; 1 GiB is far beyond any of them.
MAX_KERNEL_BYTES = 1024**3
# Spatial/sequence extents of a target shape; bigger ones are not shapes we measure at.
MAX_EXTENT = 1 << 20
MAX_TORCH_VERSION_LENGTH = 32
# Kernel fields that must match for a re-registration to count as the same kernel.
IDENTITY_FIELDS = ("blueprint_name", "blueprint_version", "device", "dtype", "slot_kind",
                   "channels", "format", "uri", "sha256", "size_bytes")

_LIST = """
SELECT * FROM kernels
WHERE ($1::text IS NULL OR (blueprint_name = $1 AND blueprint_version = $2))
  AND ($3::text IS NULL OR device = $3)
  AND ($4::text IS NULL OR state = $4)
  AND ($5::int IS NULL OR channels = $5)
  AND ($6::text IS NULL OR kernel_id > $6)
ORDER BY kernel_id
LIMIT $7
"""


@dataclass(frozen=True)
class KernelQuery:
    """Filters of ListKernels (empty / 0: no filter)."""

    blueprint_ref: str = ""
    device: str = ""
    state: int = 0
    channels: int = 0

    def as_filters(self) -> dict:
        return {"blueprint_ref": self.blueprint_ref, "device": self.device,
                "state": self.state, "channels": self.channels}


def check_kernel(kernel: kp.KernelArtifact, store: KernelStore) -> tuple[str, str]:
    """Field checks of a RegisterKernel request; returns the blueprint (name, version)."""
    if not validate.SHA256_RE.match(kernel.sha256):
        raise InvalidArgument("kernel.sha256", "must be 64 lower-case hex digits")
    validate.kernel_id(kernel.kernel_id, "kernel.kernel_id")
    if kernel.kernel_id != f"k-{kernel.sha256[:16]}":
        raise InvalidArgument("kernel.kernel_id", f"must be k-{kernel.sha256[:16]} "
                              "(k- and the first 16 hex digits of sha256)")
    ref = validate.blueprint_ref(kernel.blueprint_ref, "kernel.blueprint_ref")
    _check_target(kernel.target)
    validate.enum_member(kernel.format, kp.KernelFormat, "kernel.format", allow_unspecified=False)
    if kernel.uri != store.uri_for(kernel.sha256):
        raise InvalidArgument("kernel.uri", f"must be the content-addressed {store.uri_for(kernel.sha256)}")
    if not 0 < kernel.size_bytes <= MAX_KERNEL_BYTES:
        raise InvalidArgument("kernel.size_bytes", f"{kernel.size_bytes} is not in [1, {MAX_KERNEL_BYTES}]")
    _check_stats(kernel.stats)
    if not kernel.validation.passed:
        raise FailedPrecondition("kernel.validation.passed: only kernels that passed validation "
                                 "can be registered")
    return ref


def _check_target(target: kp.KernelTarget) -> None:
    if not validate.DEVICE_RE.match(target.device):
        raise InvalidArgument("kernel.target.device", f"{target.device[:40]!r} is not a device type "
                              "like 'cpu' or 'cuda'")
    validate.enum_member(target.dtype, common.Dtype, "kernel.target.dtype", allow_unspecified=False)
    try:
        validate_slot_shape(target.shape, "kernel.target.shape")
    except BlueprintError as exc:
        raise InvalidArgument(exc.field_path, exc.message) from None
    for name in ("length", "height", "width"):
        if getattr(target.shape, name) > MAX_EXTENT:
            raise InvalidArgument(f"kernel.target.shape.{name}", f"larger than {MAX_EXTENT}")
    if len(target.torch_version) > MAX_TORCH_VERSION_LENGTH:
        raise InvalidArgument("kernel.target.torch_version", "too long")


def _check_stats(stats: kp.KernelStats) -> None:
    for name in ("params", "flops", "peak_memory_bytes"):
        validate.int64(getattr(stats, name), f"kernel.stats.{name}")
    for name in ("latency_p50_ms", "latency_p99_ms"):
        value = getattr(stats, name)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgument(f"kernel.stats.{name}", f"{value} must be a finite number >= 0")
    if stats.latency_samples > validate.INT64_MAX >> 32:
        raise InvalidArgument("kernel.stats.latency_samples", "implausibly large")


class KernelRegistry:
    """Kernel records in PostgreSQL, their bytes in the object store."""

    def __init__(self, db: Database, store: KernelStore, feed: CatalogFeed) -> None:
        self.db = db
        self.store = store
        self.feed = feed

    async def register(self, kernel: kp.KernelArtifact, *, bytes_verified: bool = False
                       ) -> tuple[kp.KernelArtifact, bool]:
        """Register bytes already in the store; idempotent on kernel_id. A kernel that was
        invalidated is restored to VALID when its bytes verify again. `bytes_verified`:
        the caller (UploadKernel) has just stored exactly these bytes, hashed on the way in,
        so they are not read back."""
        name, version = check_kernel(kernel, self.store)
        await self.check_blueprint(kernel)
        if not bytes_verified:
            await self._verify_object(kernel)
        row = records.kernel_row(kernel, name, version)
        async with self.db.transaction() as conn:
            await self._check_blueprint(conn, name, version, kernel, lock=True)
            existing = await conn.fetchrow("SELECT * FROM kernels WHERE kernel_id = $1 FOR UPDATE",
                                           kernel.kernel_id)
            event, created = await self._store_row(conn, row, existing)
            stored = await fetch_kernel(conn, kernel.kernel_id)
        if event is not None:
            self.feed.published(event)
        return stored, created

    async def _store_row(self, conn, row: dict, existing) -> tuple[tm.CatalogEvent | None, bool]:
        ref = f"{row['blueprint_name']}@{row['blueprint_version']}"
        if existing is not None:
            differing = [f for f in IDENTITY_FIELDS if existing[f] != row[f]]
            if differing:
                raise AlreadyExists(f"kernel.kernel_id: {row['kernel_id']} is registered with a "
                                    f"different {differing[0]}")
            if existing["state"] != "INVALID":
                return None, False
            await conn.execute("UPDATE kernels SET state = 'VALID', state_reason = '', "
                               "updated_at = now() WHERE kernel_id = $1", row["kernel_id"])
            detail = "re-registered; bytes verified again"
            return await record_event(conn, tm.CATALOG_CHANGE_KERNEL_REGISTERED, blueprint_ref=ref,
                                      kernel_id=row["kernel_id"], kernel_state=kp.KERNEL_STATE_VALID,
                                      detail=detail), False
        row = {**row, "state": "VALID"}
        columns = ", ".join(row)
        values = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await conn.execute(f"INSERT INTO kernels ({columns}) VALUES ({values})", *row.values())
        return await record_event(conn, tm.CATALOG_CHANGE_KERNEL_REGISTERED, blueprint_ref=ref,
                                  kernel_id=row["kernel_id"], kernel_state=kp.KERNEL_STATE_VALID), True

    async def check_blueprint(self, kernel: kp.KernelArtifact) -> None:
        """The kernel's blueprint exists, is not RETIRED and supports its slot kind."""
        name, version = validate.blueprint_ref(kernel.blueprint_ref, "kernel.blueprint_ref")
        async with self.db.acquire() as conn:
            await self._check_blueprint(conn, name, version, kernel)

    @staticmethod
    async def _check_blueprint(conn, name: str, version: str, kernel: kp.KernelArtifact,
                               lock: bool = False) -> None:
        row = await conn.fetchrow(
            "SELECT state, slot_kinds FROM blueprints WHERE name = $1 AND version = $2"
            + (" FOR SHARE" if lock else ""), name, version)
        if row is None:
            raise NotFound(f"kernel.blueprint_ref: no blueprint {name}@{version}; create it first")
        if row["state"] == "RETIRED":
            raise FailedPrecondition(f"kernel.blueprint_ref: {name}@{version} is RETIRED")
        kind = records.short_name(records.SLOT_KIND, kernel.target.shape.kind)
        if kind not in row["slot_kinds"]:
            raise InvalidArgument("kernel.target.shape.kind", f"{name}@{version} supports "
                                  f"{', '.join(row['slot_kinds'])}, not {kind}")

    async def _verify_object(self, kernel: kp.KernelArtifact) -> None:
        """The object must exist with exactly the declared size and digest."""
        try:
            size = await self.store.size(kernel.uri)
            if size != kernel.size_bytes:
                raise FailedPrecondition(f"kernel.size_bytes: {kernel.size_bytes} but the stored "
                                         f"object has {size} bytes")
            digest, _ = await self.store.digest(kernel.uri)
        except ObjectMissing:
            raise FailedPrecondition(f"kernel.uri: no object at {kernel.uri}; store the bytes first") from None
        if digest != kernel.sha256:
            raise FailedPrecondition(f"kernel.sha256: {kernel.sha256} but the stored bytes hash to {digest}")

    async def get(self, kernel_id: str) -> kp.KernelArtifact:
        validate.kernel_id(kernel_id)
        async with self.db.acquire() as conn:
            return await fetch_kernel(conn, kernel_id)

    async def list(self, query: KernelQuery, size: int, token: str) -> tuple[list[kp.KernelArtifact], str]:
        name = version = None
        if query.blueprint_ref:
            name, version = validate.blueprint_ref(query.blueprint_ref)
        if query.device and not validate.DEVICE_RE.match(query.device):
            raise InvalidArgument("device", f"{query.device[:40]!r} is not a device type like 'cpu'")
        validate.enum_member(query.state, kp.KernelState, "state", allow_unspecified=True)
        if query.channels > MAX_DIM:
            raise InvalidArgument("channels", f"{query.channels} is larger than {MAX_DIM}")
        filters = query.as_filters()
        after = pagination.decode("ListKernels", token, filters, (str,)) or (None,)
        limit = pagination.page_size(size)
        state = records.short_name(records.KERNEL_STATE, query.state) if query.state else None
        async with self.db.acquire() as conn:
            rows = await conn.fetch(_LIST, name, version, query.device or None, state,
                                    query.channels or None, *after, limit + 1)
        page, token = pagination.next_token("ListKernels", rows, limit, lambda r: (r["kernel_id"],), filters)
        return [records.kernel_artifact(r) for r in page], token

    async def invalidate(self, kernel_id: str, reason: str) -> None:
        """Mark a kernel INVALID (its bytes are not what was registered) and announce it."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE kernels SET state = 'INVALID', state_reason = $2, updated_at = now() "
                "WHERE kernel_id = $1 AND state <> 'INVALID' "
                "RETURNING blueprint_name, blueprint_version", kernel_id, reason)
            if row is None:
                return
            event = await record_event(
                conn, tm.CATALOG_CHANGE_KERNEL_INVALIDATED,
                blueprint_ref=f"{row['blueprint_name']}@{row['blueprint_version']}",
                kernel_id=kernel_id, kernel_state=kp.KERNEL_STATE_INVALID, detail=reason)
        KERNELS_INVALIDATED.inc()
        log.error("kernel invalidated", extra={"kernel_id": kernel_id, "reason": reason})
        self.feed.published(event)


async def fetch_kernel(conn: asyncpg.Connection, kernel_id: str) -> kp.KernelArtifact:
    row = await conn.fetchrow("SELECT * FROM kernels WHERE kernel_id = $1", kernel_id)
    if row is None:
        raise NotFound(f"kernel_id: no kernel {kernel_id}")
    return records.kernel_artifact(row)

