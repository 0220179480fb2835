"""Validation of SubmitCompile input: which blueprint, and targets it can be built for.

Everything here is pure and runs before anything is written anywhere, so a malformed
request leaves no trace in PostgreSQL, Urza or the object store. Errors are
InvalidSubmission naming the field in proto terms, e.g.
``blueprint.graph.nodes[2].attrs.out_features`` or ``targets[0].shape.channels``.
"""

from __future__ import annotations

import hashlib

import torch

from esper.blueprints import BlueprintError, parse_ref, resolve_for_shape, validate_blueprint
from esper.leyline.v1 import blueprint_pb2, common_pb2, kernel_pb2
from esper.tezzeret.errors import InvalidSubmission
from esper.tezzeret.jobs import targets_to_json
from esper.tezzeret.pipeline import torch_version

# Most targets in one job: a job is one worker's unit of work; more belong in more jobs.
MAX_TARGETS = 8
# Longest sequence/spatial length of a target: characterising runs real forwards on it.
MAX_LENGTH = 8192
# Most activation elements per sample (C x length x height x width): bounds the memory a
# validation or latency run can take (16 Mi fp32 elements = 64 MiB per sample).
MAX_ACTIVATION_ELEMENTS = 16 * 1024 * 1024
# dtypes each device computes every op of the vocabulary in (fp16 on CPU lacks kernels).
DEVICE_DTYPES = {
    "cpu": (common_pb2.DTYPE_FLOAT32, common_pb2.DTYPE_FLOAT64, common_pb2.DTYPE_BFLOAT16),
    "cuda": (common_pb2.DTYPE_FLOAT32, common_pb2.DTYPE_FLOAT64, common_pb2.DTYPE_BFLOAT16,
             common_pb2.DTYPE_FLOAT16),
}


def available_devices() -> tuple[str, ...]:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def check_inline_blueprint(spec: blueprint_pb2.BlueprintSpec) -> str:
    """Validate an inline blueprint; returns its ref."""
    try:
        validate_blueprint(spec)
    except BlueprintError as exc:
        raise InvalidSubmission(f"blueprint.{exc.field_path}", exc.message) from None
    return f"{spec.name}@{spec.version}"


def check_ref(ref: str, field: str = "blueprint_ref") -> str:
    try:
        parse_ref(ref)
    except BlueprintError as exc:
        raise InvalidSubmission(field, exc.message) from None
    return ref


def _check_dims(shape: common_pb2.SlotShape, field: str) -> None:
    kind = shape.kind
    if kind in (common_pb2.SLOT_KIND_SEQUENCE, common_pb2.SLOT_KIND_CONV1D):
        needed, unused = ("length",), ("height", "width")
    elif kind == common_pb2.SLOT_KIND_CONV2D:
        needed, unused = ("height", "width"), ("length",)
    else:
        needed, unused = (), ("length", "height", "width")
    for name in needed:
        if not 1 <= getattr(shape, name) <= MAX_LENGTH:
            raise InvalidSubmission(f"{field}.{name}", f"{getattr(shape, name)} is not in "
                                    f"[1, {MAX_LENGTH}] for {common_pb2.SlotKind.Name(kind)}")
    for name in unused:
        if getattr(shape, name):
            raise InvalidSubmission(f"{field}.{name}",
                                    f"must be 0 for {common_pb2.SlotKind.Name(kind)}")
    elements = shape.channels * max(shape.length, 1) * max(shape.height, 1) * max(shape.width, 1)
    if elements > MAX_ACTIVATION_ELEMENTS:
        raise InvalidSubmission(field, f"{elements} activation elements per sample exceed "
                                f"{MAX_ACTIVATION_ELEMENTS}")


def check_target(spec: blueprint_pb2.BlueprintSpec, target: kernel_pb2.KernelTarget,
                 field: str) -> None:
    devices = available_devices()
    if target.device not in devices:
        raise InvalidSubmission(f"{field}.device", f"{target.device[:40]!r} is not one of "
                                f"{list(devices)} on this Tezzeret")
    if target.dtype not in DEVICE_DTYPES[target.device]:
        name = (common_pb2.Dtype.Name(target.dtype) if target.dtype in common_pb2.Dtype.values()
                else str(target.dtype))
        raise InvalidSubmission(f"{field}.dtype", f"{name} is not supported on {target.device}")
    if target.torch_version and target.torch_version != torch_version():
        raise InvalidSubmission(f"{field}.torch_version", f"{target.torch_version[:40]!r}: this "
                                f"Tezzeret builds with torch {torch_version()} (leave it empty)")
    shape_field = f"{field}.shape"
    if target.shape.kind not in common_pb2.SlotKind.values() or not target.shape.kind:
        raise InvalidSubmission(f"{shape_field}.kind", f"{target.shape.kind} is not a slot kind")
    _check_dims(target.shape, shape_field)
    try:
        resolve_for_shape(spec, target.shape)
    except BlueprintError as exc:
        if exc.field_path.startswith("shape"):
            raise InvalidSubmission(f"{field}.{exc.field_path}", exc.message) from None
        raise InvalidSubmission(shape_field, f"blueprint {exc.field_path}: {exc.message}") from None


def check_targets(spec: blueprint_pb2.BlueprintSpec, targets) -> list[kernel_pb2.KernelTarget]:
    if not targets:
        raise InvalidSubmission("targets", "at least one target is required")
    if len(targets) > MAX_TARGETS:
        raise InvalidSubmission("targets", f"{len(targets)} targets exceed {MAX_TARGETS} per job")
    seen: dict[bytes, int] = {}
    out = []
    for i, target in enumerate(targets):
        check_target(spec, target, f"targets[{i}]")
        normal = kernel_pb2.KernelTarget()
        normal.CopyFrom(target)
        normal.torch_version = ""
        key = normal.SerializeToString(deterministic=True)
        if key in seen:
            raise InvalidSubmission(f"targets[{i}]", f"duplicates targets[{seen[key]}]")
        seen[key] = i
        out.append(normal)
    return out


def request_key(ref: str, graph_digest: str, targets: list[kernel_pb2.KernelTarget]) -> str:
    """Equal submissions (same blueprint version and graph, same targets) share this key."""
    text = "\n".join((ref, graph_digest, targets_to_json(targets)))
    return hashlib.sha256(text.encode()).hexdigest()
