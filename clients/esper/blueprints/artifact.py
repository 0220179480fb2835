"""The KERNEL_FORMAT_SAFETENSORS kernel artifact: a safetensors file of a seed's state_dict
whose metadata header carries the BlueprintSpec and SlotShape it was built from.

Loading never unpickles: the SHA-256 digest is checked first, the header is parsed as JSON,
tensors are read by the safetensors reference parser, and the module is rebuilt from the
blueprint by ``build_seed`` before the weights are loaded strictly. Packing is
deterministic (sorted keys, fixed layout), so the same module always gives the same bytes
and therefore the same content address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import struct

import torch
from google.protobuf.message import DecodeError
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from esper.blueprints.builder import build_seed
from esper.blueprints.errors import BlueprintError, KernelFormatError, KernelIntegrityError
from esper.blueprints.graph import resolve_for_shape
from esper.leyline import ids
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common
from esper.leyline.v1 import kernel_pb2

# Marks an Esper kernel (and its layout version) in the safetensors metadata.
FORMAT_TAG = "esper.kernel.v1"
# Largest header accepted: a 64-node blueprint serialises to a few KiB; anything bigger is
# corrupt or hostile and is refused before JSON parsing.
MAX_HEADER_BYTES = 1 << 20
# safetensors pads the JSON header with spaces so the data buffer starts 8-byte aligned.
HEADER_ALIGNMENT = 8
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")

_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def kernel_id_for(digest: str) -> str:
    """Content-addressed kernel id (the format of esper.leyline.ids)."""
    _check_digest(digest)
    return ids.kernel_id_for(digest)


def pack_kernel(spec: bp.BlueprintSpec, shape: common.SlotShape, module: torch.nn.Module,
                *, target: kernel_pb2.KernelTarget | None = None) -> bytes:
    """Serialise ``module``'s state_dict with ``spec`` and ``shape`` in the header.

    ``target`` (device, dtype, torch version) goes into the header too, so builds of one
    blueprint for different targets are different artifacts with different kernel ids."""
    resolve_for_shape(spec, shape)  # refuse to pack what could never be unpacked
    metadata = {
        "format": FORMAT_TAG,
        "blueprint": _b64(spec.SerializeToString(deterministic=True)),
        "blueprint_ref": f"{spec.name}@{spec.version}",
        "slot_shape": _b64(shape.SerializeToString(deterministic=True)),
    }
    if target is not None:
        metadata["target"] = _b64(target.SerializeToString(deterministic=True))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    return _serialise(tensors, metadata)


def unpack_kernel(data: bytes, expected_sha256: str, *, device: torch.device | str | None = None
                  ) -> tuple[bp.BlueprintSpec, common.SlotShape, torch.nn.Module]:
    """Verify, parse and rebuild a kernel. Raises KernelIntegrityError on a digest mismatch
    and KernelFormatError on anything malformed; never unpickles."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise KernelFormatError(f"kernel data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    _check_digest(expected_sha256)
    actual = sha256_hex(data)
    if not hmac.compare_digest(actual, expected_sha256):
        raise KernelIntegrityError(f"kernel digest mismatch: expected {expected_sha256}, "
                                   f"got {actual} ({len(data)} bytes)")
    spec, shape = read_kernel_header(data)
    tensors = _load_tensors(data)
    module = _rebuild(spec, shape, tensors)
    return spec, shape, module.to(device) if device is not None else module


def read_kernel_header(data: bytes) -> tuple[bp.BlueprintSpec, common.SlotShape]:
    """The BlueprintSpec and SlotShape from a kernel's header (no digest check, no tensors)."""
    meta = _header(data).get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        raise KernelFormatError(f"not an Esper kernel: metadata format is not {FORMAT_TAG!r}")
    spec, shape = bp.BlueprintSpec(), common.SlotShape()
    for key, message in (("blueprint", spec), ("slot_shape", shape)):
        try:
            message.ParseFromString(base64.b64decode(meta.get(key, ""), validate=True))
        except (binascii.Error, DecodeError, TypeError, ValueError) as exc:
            raise KernelFormatError(f"kernel metadata {key!r} is not a valid encoded message: "
                                    f"{exc}") from None
    return spec, shape


def _check_digest(digest: str) -> None:
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise KernelFormatError(f"{str(digest)[:80]!r} is not a lower-case hex SHA-256 digest")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _serialise(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise KernelFormatError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _header(data: bytes) -> dict:
    if len(data) < 8:
        raise KernelFormatError(f"kernel is truncated: {len(data)} bytes, no header")
    (size,) = struct.unpack("<Q", data[:8])
    if size > MAX_HEADER_BYTES or 8 + size > len(data):
        raise KernelFormatError(f"kernel header length {size} is invalid for {len(data)} bytes "
                                "(truncated or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KernelFormatError(f"kernel header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise KernelFormatError("kernel header is not a JSON object")
    return header


def _load_tensors(data: bytes) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise KernelFormatError(f"kernel tensors are malformed: {exc}") from None


def _rebuild(spec, shape, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) > 1:
        raise KernelFormatError(f"kernel mixes floating dtypes {sorted(map(str, float_dtypes))}")
    try:
        module = build_seed(spec, shape, dtype=next(iter(float_dtypes), None), seed=0)
    except BlueprintError as exc:
        raise KernelFormatError(f"kernel blueprint is invalid: {exc}") from None
    expected = module.state_dict()
    for name, t in tensors.items():
        want = expected.get(name)
        if want is not None and (want.dtype != t.dtype or want.shape != t.shape):
            raise KernelFormatError(f"kernel tensor {name!r} is {t.dtype}{list(t.shape)}, the "
                                    f"blueprint builds {want.dtype}{list(want.shape)}")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise KernelFormatError(f"kernel weights do not match the blueprint: {exc}") from None
    return module
