"""SearchKernels: kernels that fit a slot and a cost budget, best expected benefit per cost
first.

Candidates are VALID kernels built for exactly the slot's kind and channel width on the
requested device, of blueprints that are neither RETIRED nor REJECTED, whose required
capabilities the caller has, within every bounded budget dimension (the kernel's measured
params, FLOPs, p99 latency and peak memory; the blueprint's risk score).

Score (higher is better):

    benefit = max(gain, MIN_BENEFIT) * (1 - risk)
    cost    = 1 + params / P + flops / F + latency_p99_ms / L + peak_memory_bytes / M
    score   = benefit / cost

`gain` is the blueprint's past_accuracy_gain_estimate (the submitted prior moved by field
reports, see outcomes.py); MIN_BENEFIT keeps blueprints with no or negative evidence
rankable by cost and risk instead of all scoring zero. Each cost term is the fraction of
the caller's budget the kernel uses when that dimension is bounded (P = max_params, ...),
else the kernel's usage relative to a reference scale below. The leading 1 keeps the
score finite for free kernels: a kernel that uses all of every bounded dimension costs 5.
Ties break on kernel id so results are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.blueprints.errors import BlueprintError
from esper.blueprints.graph import validate_slot_shape
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import urza_pb2
from esper.urza import records, validate
from esper.urza.db import Database
from esper.urza.errors import InvalidArgument

# Result counts from the proto: 0 means 10, capped at 100.
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
# Rows considered per search: a catalogue has tens of blueprints times a few targets.
SCAN_LIMIT = 5000
DEFAULT_DEVICE = "cpu"
# Floor of the benefit term: one hundredth of an accuracy point.
MIN_BENEFIT = 1e-4
# Reference scales of unbounded cost dimensions: roughly one seed-sized block at C=256.
REFERENCE_PARAMS = 1_000_000
REFERENCE_FLOPS = 100_000_000
REFERENCE_LATENCY_MS = 1.0
REFERENCE_MEMORY_BYTES = 64 * 1024 * 1024

_SEARCH = """
SELECT k.*, b.spec, b.state AS blueprint_state, b.risk_score,
       o.past_accuracy_gain_estimate AS gain_estimate
FROM kernels k
JOIN blueprints b ON b.name = k.blueprint_name AND b.version = k.blueprint_version
LEFT JOIN blueprint_outcomes o
       ON o.blueprint_name = b.name AND o.blueprint_version = b.version
WHERE k.state = 'VALID'
  AND b.state NOT IN ('RETIRED', 'REJECTED')
  AND k.device = $1 AND k.slot_kind = $2 AND k.channels = $3
  AND ($4::text[] IS NULL OR b.family = ANY ($4))
  AND b.requires_capability <@ $5::text[]
  AND ($6::bigint IS NULL OR k.params <= $6)
  AND ($7::bigint IS NULL OR k.flops <= $7)
  AND ($8::float8 IS NULL OR k.latency_p99_ms <= $8)
  AND ($9::bigint IS NULL OR k.peak_memory_bytes <= $9)
  AND b.risk_score <= $10
ORDER BY k.kernel_id
LIMIT $11
"""


@dataclass(frozen=True)
class Budget:
    """A checked CostBudget; None means unbounded."""

    max_params: int | None
    max_flops: int | None
    max_latency_ms: float | None
    max_memory_bytes: int | None
    max_risk: float

    @classmethod
    def from_proto(cls, budget: urza_pb2.CostBudget) -> Budget:
        latency = budget.max_latency_ms
        if not math.isfinite(latency) or latency < 0:
            raise InvalidArgument("budget.max_latency_ms", f"{latency} must be a finite number >= 0")
        risk = budget.max_risk
        if not math.isfinite(risk) or not 0 <= risk <= 1:
            raise InvalidArgument("budget.max_risk", f"{risk} is not in [0, 1]")
        return cls(
            max_params=_bounded_int(budget.max_params),
            max_flops=_bounded_int(budget.max_flops),
            max_latency_ms=latency or None,
            max_memory_bytes=_bounded_int(budget.max_memory_bytes),
            max_risk=risk or 1.0,
        )


def _bounded_int(value: int) -> int | None:
    """0 is unbounded; beyond BIGINT is unbounded in practice."""
    if value == 0 or value > validate.INT64_MAX:
        return None
    return value


def score(gain: float, risk: float, params: int, flops: int, latency_ms: float, memory: int,
          budget: Budget) -> float:
    """Expected benefit per cost (see the module docstring)."""
    benefit = max(gain, MIN_BENEFIT) * (1.0 - risk)
    cost = (1.0
            + params / (budget.max_params or REFERENCE_PARAMS)
            + flops / (budget.max_flops or REFERENCE_FLOPS)
            + latency_ms / (budget.max_latency_ms or REFERENCE_LATENCY_MS)
            + memory / (budget.max_memory_bytes or REFERENCE_MEMORY_BYTES))
    return benefit / cost


def limit_of(requested: int) -> int:
    return DEFAULT_LIMIT if requested == 0 else min(requested, MAX_LIMIT)


async def search_kernels(db: Database, request: urza_pb2.SearchKernelsRequest
                         ) -> list[urza_pb2.KernelCandidate]:
    try:
        validate_slot_shape(request.shape)
    except BlueprintError as exc:
        raise InvalidArgument(exc.field_path, exc.message) from None
    device = request.device or DEFAULT_DEVICE
    if not validate.DEVICE_RE.match(device):
        raise InvalidArgument("device", f"{device[:40]!r} is not a device type like 'cpu'")
    for i, family in enumerate(request.families):
        validate.enum_member(family, bp.BlueprintFamily, f"families[{i}]", allow_unspecified=False)
    capabilities = validate.labels(request.capabilities, "capabilities")
    budget = Budget.from_proto(request.budget)
    families = [records.short_name(records.FAMILY, f) for f in request.families] or None
    async with db.acquire() as conn:
        rows = await conn.fetch(
            _SEARCH, device, records.short_name(records.SLOT_KIND, request.shape.kind),
            request.shape.channels, families, capabilities, budget.max_params, budget.max_flops,
            budget.max_latency_ms, budget.max_memory_bytes, budget.max_risk, SCAN_LIMIT)
    candidates = [_candidate(row, budget) for row in rows]
    candidates.sort(key=lambda c: (-c.score, c.kernel.kernel_id))
    return candidates[:limit_of(request.limit)]


def _candidate(row, budget: Budget) -> urza_pb2.KernelCandidate:
    spec = bp.BlueprintSpec.FromString(row["spec"])
    if row["gain_estimate"] is not None:
        spec.metadata.past_accuracy_gain_estimate = row["gain_estimate"]
    value = score(spec.metadata.past_accuracy_gain_estimate, row["risk_score"], row["params"],
                  row["flops"], row["latency_p99_ms"], row["peak_memory_bytes"], budget)
    return urza_pb2.KernelCandidate(kernel=records.kernel_artifact(row), blueprint=spec, score=value)
