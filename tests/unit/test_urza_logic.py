"""Pure logic of Urza: the blueprint state table, the search score, version
ordering, chunk sizes and row <-> message translation."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import kernel_pb2 as kp
from esper.urza import download, records, search, states
from esper.urza.errors import InvalidArgument
from esper.urza.store import key_for, parse_uri

ALL_STATES = [v for v in bp.BlueprintState.values() if v]


@pytest.mark.parametrize("current,new", list(itertools.product(ALL_STATES, ALL_STATES)))
def test_state_table_exhaustively(current: int, new: int) -> None:
    expected = (
        new == current
        or (current != states.RETIRED and new == states.RETIRED)
        or (current == states.SUBMITTED and new in (states.COMPILING, states.VALIDATED,
                                                     states.CHARACTERISED, states.REJECTED))
        or (current == states.COMPILING and new in (states.SUBMITTED, states.VALIDATED,
                                                     states.CHARACTERISED, states.REJECTED))
        or (current == states.VALIDATED and new in (states.COMPILING, states.CHARACTERISED,
                                                     states.REJECTED))
        or (current in (states.CHARACTERISED, states.REJECTED) and new == states.COMPILING)
    )
    assert states.is_legal(current, new) is expected


def test_retired_is_terminal_and_every_state_has_a_row() -> None:
    assert set(states.TRANSITIONS) == set(ALL_STATES)
    assert states.allowed_from(states.RETIRED) == []
    assert not states.is_legal(states.RETIRED, states.COMPILING)


def test_score_prefers_benefit_and_penalises_cost_and_risk() -> None:
    open_budget = search.Budget(None, None, None, None, 1.0)
    base = search.score(0.02, 0.1, 1000, 10_000, 0.1, 1024, open_budget)
    assert search.score(0.04, 0.1, 1000, 10_000, 0.1, 1024, open_budget) > base
    assert search.score(0.02, 0.5, 1000, 10_000, 0.1, 1024, open_budget) < base
    assert search.score(0.02, 0.1, 900_000, 10_000, 0.1, 1024, open_budget) < base
    assert search.score(0.02, 0.1, 1000, 10_000, 5.0, 1024, open_budget) < base
    # No evidence (or negative evidence) still ranks by cost and risk, never by zero.
    assert search.score(-0.5, 0.0, 0, 0, 0.0, 0, open_budget) == pytest.approx(search.MIN_BENEFIT)
    # Using a whole bounded budget in every dimension costs 1 + 4.
    tight = search.Budget(100, 1000, 1.0, 4096, 1.0)
    assert search.score(1.0, 0.0, 100, 1000, 1.0, 4096, tight) == pytest.approx(1.0 / 5.0)


def test_budget_checks() -> None:
    from esper.leyline.v1 import urza_pb2

    budget = search.Budget.from_proto(urza_pb2.CostBudget(max_params=2**64 - 1))
    assert budget.max_params is None and budget.max_risk == 1.0
    with pytest.raises(InvalidArgument, match="budget.max_latency_ms"):
        search.Budget.from_proto(urza_pb2.CostBudget(max_latency_ms=float("inf")))
    with pytest.raises(InvalidArgument, match="budget.max_risk"):
        search.Budget.from_proto(urza_pb2.CostBudget(max_risk=1.5))
    assert search.limit_of(0) == search.DEFAULT_LIMIT and search.limit_of(10**6) == search.MAX_LIMIT


def test_version_key_orders_numerically() -> None:
    versions = ["1.10.0", "1.2.0", "0.9.9", "1.2.0-rc.1", "1.2.0-alpha", "10.0.0"]
    ordered = sorted(versions, key=records.version_key)
    assert ordered == ["0.9.9", "1.2.0-alpha", "1.2.0-rc.1", "1.2.0", "1.10.0", "10.0.0"]


def test_chunk_sizes() -> None:
    assert download.chunk_size(0) == download.DEFAULT_CHUNK_BYTES
    assert download.chunk_size(1) == download.MIN_CHUNK_BYTES
    assert download.chunk_size(2**32 - 1) == download.MAX_CHUNK_BYTES


def test_content_addressed_keys() -> None:
    digest = "ab" + "0" * 62
    assert key_for(digest) == f"sha256/ab/{digest}"
    assert parse_uri(f"s3://bucket/sha256/ab/{digest}") == ("bucket", f"sha256/ab/{digest}")
    for bad in ("", "AB" + "0" * 62, "../" * 22):
        with pytest.raises(ValueError):
            key_for(bad)
    for bad in ("http://x/y", "s3://bucket", "s3:///key"):
        with pytest.raises(ValueError):
            parse_uri(bad)


def test_kernel_rows_round_trip() -> None:
    kernel = kp.KernelArtifact(
        kernel_id="k-" + "a" * 16, blueprint_ref="BP-IA3@1.0.0",
        target=kp.KernelTarget(device="cpu", dtype=common.DTYPE_FLOAT32,
                               shape=common.SlotShape(kind=common.SLOT_KIND_CONV2D, channels=8,
                                                      height=4, width=4), torch_version="2.13.0"),
        format=kp.KERNEL_FORMAT_SAFETENSORS, uri="s3://b/k", sha256="a" * 64, size_bytes=10,
        stats=kp.KernelStats(params=1, flops=2, latency_p50_ms=0.5, latency_p99_ms=1.5,
                             peak_memory_bytes=3, latency_samples=4),
        validation=kp.ValidationReport(passed=True, checks=[kp.ValidationCheck(name="x", passed=True)],
                                       optimisations=["torch.export"]),
        state=kp.KERNEL_STATE_VALID)
    row = records.kernel_row(kernel, "BP-IA3", "1.0.0")
    assert row["slot_kind"] == "CONV2D" and row["dtype"] == "FLOAT32" and row["format"] == "SAFETENSORS"
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    back = records.kernel_artifact({**row, "state": "VALID", "state_reason": "", "created_at": now})
    kernel.created_at.FromDatetime(now)
    assert back == kernel


def test_enum_short_names() -> None:
    assert records.short_name(records.FAMILY, bp.BLUEPRINT_FAMILY_MOE) == "MOE"
    assert records.enum_value(records.FAMILY, "MOE") == bp.BLUEPRINT_FAMILY_MOE
    assert records.enum_value(records.FAMILY, "NOPE") == 0
