"""Translation between Leyline messages and Urza's table rows.

Enum columns hold short names ("MLP", "VALID", "FEATURES") so the tables read plainly in
psql; `short_name`/`enum_value` convert both ways. JSONB columns hold protobuf JSON with
the .proto field names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import kernel_pb2 as kp
from esper.leyline.v1 import telemetry_pb2 as tm

FAMILY = (bp.BlueprintFamily, "BLUEPRINT_FAMILY_")
BLUEPRINT_STATE = (bp.BlueprintState, "BLUEPRINT_STATE_")
SLOT_KIND = (common.SlotKind, "SLOT_KIND_")
DTYPE = (common.Dtype, "DTYPE_")
KERNEL_FORMAT = (kp.KernelFormat, "KERNEL_FORMAT_")
KERNEL_STATE = (kp.KernelState, "KERNEL_STATE_")
CATALOG_CHANGE = (tm.CatalogChange, "CATALOG_CHANGE_")
# Width of each zero-padded version component in `version_key` (semver parts are < 10**10).
VERSION_PART_WIDTH = 10

EnumSpec = tuple[EnumTypeWrapper, str]


def short_name(spec: EnumSpec, value: int) -> str:
    """BLUEPRINT_FAMILY_MLP -> "MLP"."""
    wrapper, prefix = spec
    return wrapper.Name(value).removeprefix(prefix)


def enum_value(spec: EnumSpec, name: str) -> int:
    """"MLP" -> BLUEPRINT_FAMILY_MLP; 0 (UNSPECIFIED) for an empty or unknown name."""
    wrapper, prefix = spec
    try:
        return wrapper.Value(prefix + name) if name else 0
    except ValueError:
        return 0


def to_json(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def graph_digest(graph: bp.OpGraph) -> str:
    """SHA-256 of the graph's deterministic serialisation (maps sorted)."""
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def spec_bytes(spec: bp.BlueprintSpec) -> bytes:
    return spec.SerializeToString(deterministic=True)


def version_key(version: str) -> str:
    """"1.10.0-rc.1" -> "0000000001.0000000010.0000000000-rc.1": sorts numerically, and a
    release after its pre-releases ("~" sorts after "-"). Build metadata is ignored."""
    release = version.partition("+")[0]
    core, _, prerelease = release.partition("-")
    padded = ".".join(part.zfill(VERSION_PART_WIDTH) for part in core.split("."))
    return f"{padded}-{prerelease}" if prerelease else f"{padded}~"


def blueprint_row(spec: bp.BlueprintSpec, state: int) -> dict[str, Any]:
    """The column values of a new blueprints row."""
    return {
        "name": spec.name,
        "version": spec.version,
        "version_key": version_key(spec.version),
        "family": short_name(FAMILY, spec.family),
        "slot_kinds": [short_name(SLOT_KIND, k) for k in spec.slot_kinds],
        "graph": to_json(spec.graph),
        "metadata": to_json(spec.metadata),
        "tags": list(spec.metadata.tags),
        "requires_capability": list(spec.metadata.requires_capability),
        "risk_score": spec.metadata.risk_score,
        "graph_digest": graph_digest(spec.graph),
        "state": short_name(BLUEPRINT_STATE, state),
        "spec": spec_bytes(spec),
    }


def blueprint_record(row: Mapping[str, Any]) -> bp.BlueprintRecord:
    """A BlueprintRecord from a blueprints row joined with its outcomes (may be NULL)."""
    spec = bp.BlueprintSpec.FromString(row["spec"])
    if row.get("gain_estimate") is not None:
        spec.metadata.past_accuracy_gain_estimate = row["gain_estimate"]
    record = bp.BlueprintRecord(
        spec=spec,
        state=enum_value(BLUEPRINT_STATE, row["state"]),
        reason=row["reason"],
        graph_digest=row["graph_digest"],
        times_used=row.get("times_used") or 0,
        fossilized_count=row.get("fossilized_count") or 0,
        culled_count=row.get("culled_count") or 0,
    )
    record.created_at.FromDatetime(row["created_at"])
    record.updated_at.FromDatetime(row["updated_at"])
    return record


def kernel_row(kernel: kp.KernelArtifact, name: str, version: str) -> dict[str, Any]:
    """The column values of a new kernels row (state set by the caller)."""
    target, stats = kernel.target, kernel.stats
    return {
        "kernel_id": kernel.kernel_id,
        "blueprint_name": name,
        "blueprint_version": version,
        "device": target.device,
        "dtype": short_name(DTYPE, target.dtype),
        "slot_kind": short_name(SLOT_KIND, target.shape.kind),
        "channels": target.shape.channels,
        "length": target.shape.length,
        "height": target.shape.height,
        "width": target.shape.width,
        "torch_version": target.torch_version,
        "format": short_name(KERNEL_FORMAT, kernel.format),
        "uri": kernel.uri,
        "sha256": kernel.sha256,
        "size_bytes": kernel.size_bytes,
        "params": stats.params,
        "flops": stats.flops,
        "latency_p50_ms": stats.latency_p50_ms,
        "latency_p99_ms": stats.latency_p99_ms,
        "peak_memory_bytes": stats.peak_memory_bytes,
        "latency_samples": stats.latency_samples,
        "validation": to_json(kernel.validation),
    }


def kernel_artifact(row: Mapping[str, Any]) -> kp.KernelArtifact:
    kernel = kp.KernelArtifact(
        kernel_id=row["kernel_id"],
        blueprint_ref=f"{row['blueprint_name']}@{row['blueprint_version']}",
        target=kp.KernelTarget(
            device=row["device"],
            dtype=enum_value(DTYPE, row["dtype"]),
            shape=common.SlotShape(
                kind=enum_value(SLOT_KIND, row["slot_kind"]), channels=row["channels"],
                length=row["length"], height=row["height"], width=row["width"]),
            torch_version=row["torch_version"],
        ),
        format=enum_value(KERNEL_FORMAT, row["format"]),
        uri=row["uri"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        stats=kp.KernelStats(
            params=row["params"], flops=row["flops"], latency_p50_ms=row["latency_p50_ms"],
            latency_p99_ms=row["latency_p99_ms"], peak_memory_bytes=row["peak_memory_bytes"],
            latency_samples=row["latency_samples"]),
        state=enum_value(KERNEL_STATE, row["state"]),
        state_reason=row["state_reason"],
    )
    json_format.ParseDict(row["validation"], kernel.validation, ignore_unknown_fields=True)
    kernel.created_at.FromDatetime(row["created_at"])
    return kernel


def catalog_event(row: Mapping[str, Any]) -> tm.CatalogEvent:
    return tm.CatalogEvent(
        change=enum_value(CATALOG_CHANGE, row["change"]),
        blueprint_ref=row["blueprint_ref"],
        kernel_id=row["kernel_id"],
        blueprint_state=enum_value(BLUEPRINT_STATE, row["blueprint_state"]),
        kernel_state=enum_value(KERNEL_STATE, row["kernel_state"]),
        detail=row["detail"],
        revision=row["revision"],
    )
