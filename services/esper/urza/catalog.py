"""The blueprint catalogue: create, read, list, state changes, and the built-in seed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from esper.blueprints.errors import BlueprintError
from esper.blueprints.graph import validate_blueprint
from esper.blueprints.refs import spec_ref
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import telemetry_pb2 as tm
from esper.runtime import pagination
from esper.urza import records, states, validate
from esper.urza.db import SEED_LOCK_KEY, Database
from esper.urza.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from esper.urza.events import CatalogFeed, record_event

log = logging.getLogger(__name__)

# Blueprint rows joined with their field-report aggregates (NULL when none yet).
SELECT_RECORD = """
SELECT b.*, o.times_used, o.fossilized_count, o.culled_count,
       o.past_accuracy_gain_estimate AS gain_estimate
FROM blueprints b
LEFT JOIN blueprint_outcomes o
       ON o.blueprint_name = b.name AND o.blueprint_version = b.version
"""


_LIST = SELECT_RECORD + """
WHERE ($1::text IS NULL OR b.family = $1)
  AND b.tags @> $2::text[]
  AND ($3::text IS NULL OR b.state = $3)
  AND ($4::text[] IS NULL OR b.requires_capability <@ $4)
  AND ($5::text IS NULL OR $5 = ANY (b.slot_kinds))
  AND ($6::text IS NULL OR (b.name, b.version_key, b.version) > ($6, $7, $8))
ORDER BY b.name, b.version_key, b.version
LIMIT $9
"""


@dataclass(frozen=True)
class BlueprintQuery:
    """Filters of ListBlueprints (0 / empty: no filter)."""

    family: int = 0
    tags: list[str] = field(default_factory=list)
    state: int = 0
    capabilities: list[str] = field(default_factory=list)
    slot_kind: int = 0

    def checked(self) -> BlueprintQuery:
        validate.enum_member(self.family, bp.BlueprintFamily, "family", allow_unspecified=True)
        validate.enum_member(self.state, bp.BlueprintState, "state", allow_unspecified=True)
        validate.enum_member(self.slot_kind, common.SlotKind, "slot_kind", allow_unspecified=True)
        validate.labels(self.tags, "tags")
        validate.labels(self.capabilities, "capabilities")
        return self

    def as_filters(self) -> dict:
        return {"family": self.family, "tags": sorted(self.tags), "state": self.state,
                "capabilities": sorted(self.capabilities), "slot_kind": self.slot_kind}


def checked_spec(spec: bp.BlueprintSpec) -> bp.BlueprintSpec:
    """Validate a submitted spec; INVALID_ARGUMENT names the field (op and attribute)."""
    try:
        validate_blueprint(spec)
    except BlueprintError as exc:
        raise InvalidArgument(f"spec.{exc.field_path}", exc.message) from None
    return spec


def _difference(stored: bp.BlueprintSpec, submitted: bp.BlueprintSpec) -> str:
    if records.graph_digest(stored.graph) != records.graph_digest(submitted.graph):
        return "a different graph"
    for name in ("family", "slot_kinds", "metadata"):
        if getattr(stored, name) != getattr(submitted, name):
            return f"a different {name}"
    return ""


class Catalog:
    """Blueprint records in PostgreSQL; every change also lands in the change log."""

    def __init__(self, db: Database, feed: CatalogFeed) -> None:
        self.db = db
        self.feed = feed

    async def create(self, spec: bp.BlueprintSpec) -> tuple[bp.BlueprintRecord, bool]:
        """Store a new version; an identical resubmission returns the stored record."""
        checked_spec(spec)
        async with self.db.transaction() as conn:
            event = await self._insert(conn, spec)
            record = await fetch_record(conn, spec.name, spec.version)
            stored = await fetch_spec(conn, spec.name, spec.version)
        if event is None:
            difference = _difference(stored, spec)
            if difference:
                raise AlreadyExists(f"spec: {spec_ref(spec)} already exists with {difference}; "
                                    "publish a new version instead")
            return record, False
        self.feed.published(event)
        return record, True

    async def _insert(self, conn: asyncpg.Connection, spec: bp.BlueprintSpec) -> tm.CatalogEvent | None:
        row = records.blueprint_row(spec, states.SUBMITTED)
        columns = ", ".join(row)
        values = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        inserted = await conn.fetchval(
            f"INSERT INTO blueprints ({columns}) VALUES ({values}) "
            "ON CONFLICT (name, version) DO NOTHING RETURNING name", *row.values())
        if inserted is None:
            return None
        return await record_event(conn, tm.CATALOG_CHANGE_BLUEPRINT_CREATED,
                                  blueprint_ref=spec_ref(spec), blueprint_state=states.SUBMITTED)

    async def get(self, ref: str) -> bp.BlueprintRecord:
        name, version = validate.blueprint_ref(ref)
        async with self.db.acquire() as conn:
            return await fetch_record(conn, name, version)

    async def list(self, query: BlueprintQuery, size: int, token: str
                   ) -> tuple[list[bp.BlueprintRecord], str]:
        query = query.checked()
        filters = query.as_filters()
        after = pagination.decode("ListBlueprints", token, filters, (str, str, str)) or (None, None, None)
        limit = pagination.page_size(size)
        family = records.short_name(records.FAMILY, query.family) if query.family else None
        state = records.short_name(records.BLUEPRINT_STATE, query.state) if query.state else None
        kind = records.short_name(records.SLOT_KIND, query.slot_kind) if query.slot_kind else None
        async with self.db.acquire() as conn:
            rows = await conn.fetch(_LIST, family, query.tags, state, query.capabilities or None,
                                    kind, *after, limit + 1)
        page, next_token = pagination.next_token(
            "ListBlueprints", rows, limit, lambda r: (r["name"], r["version_key"], r["version"]), filters)
        return [records.blueprint_record(r) for r in page], next_token

    async def retire(self, ref: str, reason: str) -> bp.BlueprintRecord:
        return await self.update_state(ref, states.RETIRED, reason)

    async def update_state(self, ref: str, new_state: int, reason: str) -> bp.BlueprintRecord:
        name, version = validate.blueprint_ref(ref)
        validate.enum_member(new_state, bp.BlueprintState, "state", allow_unspecified=False)
        validate.reason(reason)
        if new_state == states.REJECTED and not reason:
            raise InvalidArgument("reason", "is required when rejecting (name the failing check)")
        async with self.db.transaction() as conn:
            current = await conn.fetchval(
                "SELECT state FROM blueprints WHERE name = $1 AND version = $2 FOR UPDATE", name, version)
            if current is None:
                raise NotFound(f"blueprint_ref: no blueprint {ref}")
            current = records.enum_value(records.BLUEPRINT_STATE, current)
            event = None
            if current != new_state:
                event = await self._change_state(conn, name, version, current, new_state, reason)
            record = await fetch_record(conn, name, version)
        if event is not None:
            self.feed.published(event)
        return record

    async def _change_state(self, conn, name: str, version: str, current: int, new_state: int,
                            reason: str) -> tm.CatalogEvent:
        if not states.is_legal(current, new_state):
            allowed = ", ".join(states.allowed_from(current)) or "none (terminal)"
            raise FailedPrecondition(
                f"state: {name}@{version} is {bp.BlueprintState.Name(current)}; cannot become "
                f"{bp.BlueprintState.Name(new_state)} (allowed: {allowed})")
        await conn.execute(
            "UPDATE blueprints SET state = $3, reason = $4, updated_at = now() "
            "WHERE name = $1 AND version = $2",
            name, version, records.short_name(records.BLUEPRINT_STATE, new_state), reason)
        change = (tm.CATALOG_CHANGE_BLUEPRINT_RETIRED if new_state == states.RETIRED
                  else tm.CATALOG_CHANGE_BLUEPRINT_STATE)
        return await record_event(conn, change, blueprint_ref=f"{name}@{version}",
                                  blueprint_state=new_state, detail=reason)

    async def seed(self, specs: list[bp.BlueprintSpec]) -> int:
        """Insert the built-in blueprints that are missing (idempotent); returns how many
        were added. A stored built-in that differs from the shipped one is kept and logged:
        a changed built-in must ship as a new version."""
        events = []
        async with self.db.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK_KEY)
            for spec in specs:
                checked_spec(spec)
                event = await self._insert(conn, spec)
                if event is not None:
                    events.append(event)
                    continue
                difference = _difference(await fetch_spec(conn, spec.name, spec.version), spec)
                if difference:
                    log.warning("built-in blueprint differs from the stored one; keeping the stored",
                                extra={"blueprint": spec_ref(spec), "difference": difference})
        self.feed.published(*events)
        return len(events)


async def fetch_record(conn: asyncpg.Connection, name: str, version: str) -> bp.BlueprintRecord:
    row = await conn.fetchrow(SELECT_RECORD + " WHERE b.name = $1 AND b.version = $2", name, version)
    if row is None:
        raise NotFound(f"blueprint_ref: no blueprint {name}@{version}")
    return records.blueprint_record(row)


async def fetch_spec(conn: asyncpg.Connection, name: str, version: str) -> bp.BlueprintSpec:
    """The spec exactly as submitted (without the field-report estimate overlaid)."""
    raw = await conn.fetchval("SELECT spec FROM blueprints WHERE name = $1 AND version = $2",
                              name, version)
    if raw is None:
        raise NotFound(f"blueprint_ref: no blueprint {name}@{version}")
    return bp.BlueprintSpec.FromString(raw)
