"""The safetensors kernel artifact: deterministic, bit-exact, digest-verified, never pickled."""

import base64
import io
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import load as st_load

from esper.blueprints import (
    KernelFormatError,
    KernelIntegrityError,
    build_seed,
    builtin_blueprints,
    example_input,
    get_builtin,
    kernel_id_for,
    pack_kernel,
    read_kernel_header,
    sha256_hex,
    unpack_kernel,
)
from esper.blueprints.artifact import FORMAT_TAG
from esper.leyline.v1 import blueprint_pb2 as bp
from esper.leyline.v1 import common_pb2 as common


def packed(name="BP-MLP-GELU", kind=common.SLOT_KIND_FEATURES, c=8, **build):
    spec = get_builtin(name)
    shape = common.SlotShape(kind=kind, channels=c, length=4, height=3, width=3)
    module = build_seed(spec, shape, **build)
    return spec, shape, module, pack_kernel(spec, shape, module)


def resign(data: bytes, edit) -> bytes:
    """Rewrite the JSON header with `edit` (an attacker who also controls the digest)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size:]


@pytest.mark.parametrize("spec", builtin_blueprints(), ids=lambda s: s.name)
def test_round_trip_is_bit_exact(spec):
    shape = common.SlotShape(kind=spec.slot_kinds[-1], channels=16, length=4, height=3, width=3,
                             widen_params_per_unit=33)  # read by width blueprints only
    module = build_seed(spec, shape)
    with torch.no_grad():  # move off the zero init so every tensor carries information
        for p in module.parameters():
            p.add_(torch.randn_like(p))
    data = pack_kernel(spec, shape, module)
    spec2, shape2, module2 = unpack_kernel(data, sha256_hex(data))
    assert spec2 == spec and shape2 == shape
    a, b = module.state_dict(), module2.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert torch.equal(a[key], b[key]), key
    module.eval()
    module2.eval()
    if spec.family != bp.BLUEPRINT_FAMILY_WIDTH:  # width seeds run only once materialised
        x = example_input(shape)
        assert torch.equal(module(x), module2(x))
    assert pack_kernel(spec2, shape2, module2) == data


def test_packing_is_deterministic_and_content_addressed():
    _, _, _, one = packed(seed=3)
    _, _, _, two = packed(seed=3)
    _, _, _, other = packed(seed=4)
    assert one == two and one != other
    digest = sha256_hex(one)
    assert len(digest) == 64 and kernel_id_for(digest) == "k-" + digest[:16]
    with pytest.raises(KernelFormatError):
        kernel_id_for("xyz")


def test_is_a_standard_safetensors_file_with_readable_metadata():
    spec, shape, module, data = packed()
    tensors = st_load(data)
    assert set(tensors) == set(module.state_dict())
    assert read_kernel_header(data) == (spec, shape)
    (size,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + size])["__metadata__"]
    assert meta["format"] == FORMAT_TAG and meta["blueprint_ref"] == "BP-MLP-GELU@1.0.0"


def test_reduced_precision_round_trip():
    _spec, _shape, _module, data = packed("BP-NORM-RMS", dtype=torch.bfloat16)
    _, _, module2 = unpack_kernel(data, sha256_hex(data))
    assert all(t.dtype == torch.bfloat16 for t in module2.state_dict().values())


def test_digest_mismatch_is_refused():
    _, _, _, data = packed()
    digest = sha256_hex(data)
    flipped = bytearray(data)
    flipped[-1] ^= 1
    with pytest.raises(KernelIntegrityError, match="digest mismatch"):
        unpack_kernel(bytes(flipped), digest)
    with pytest.raises(KernelIntegrityError):
        unpack_kernel(data, "0" * 64)
    for bad in ("", "abc", digest.upper(), digest[:-1] + "g", None):
        with pytest.raises(KernelFormatError, match="digest"):
            unpack_kernel(data, bad)


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1, -17])
def test_truncated_bytes_are_refused_clearly(cut):
    _, _, _, data = packed()
    short = data[:cut]
    with pytest.raises(KernelFormatError) as exc:
        unpack_kernel(short, sha256_hex(short))
    assert not isinstance(exc.value, KernelIntegrityError)
    assert any(word in str(exc.value) for word in ("truncated", "malformed", "header"))


@pytest.mark.parametrize("garbage", [b"\x00" * 64, b"\xff" * 64, b"hello world, not a kernel",
                                     struct.pack("<Q", 4) + b"[1] "])
def test_garbage_is_refused(garbage):
    with pytest.raises(KernelFormatError):
        unpack_kernel(garbage, sha256_hex(garbage))
    with pytest.raises(KernelFormatError, match="must be bytes"):
        unpack_kernel("not bytes", sha256_hex(b""))  # type: ignore[arg-type]


def test_pickles_are_never_loaded():
    class Boom:
        def __reduce__(self):
            return (exec, ("import builtins; builtins.ESPER_PWNED = True",))

    buf = io.BytesIO()
    torch.save({"ops.fc1.weight": torch.zeros(2)}, buf)
    for payload in (buf.getvalue(), pickle.dumps(Boom())):
        with pytest.raises(KernelFormatError):
            unpack_kernel(payload, sha256_hex(payload))
    import builtins

    assert not hasattr(builtins, "ESPER_PWNED")


def test_tampered_headers_and_weights_are_refused():
    _, _, _, data = packed()

    def check(edit, match):
        bad = resign(data, edit)
        with pytest.raises(KernelFormatError, match=match):
            unpack_kernel(bad, sha256_hex(bad))

    check(lambda h: h["__metadata__"].update(format="other"), "not an Esper kernel")
    check(lambda h: h.pop("__metadata__"), "not an Esper kernel")
    check(lambda h: h["__metadata__"].update(blueprint="!!!"), "'blueprint'")
    check(lambda h: h["__metadata__"].update(slot_shape=base64.b64encode(b"\xff\xff").decode()),
          "'slot_shape'")
    check(lambda h: h.update({"ops.extra": h.pop("ops.fc1.bias")}), "do not match")
    check(lambda h: h["ops.fc1.bias"].update(data_offsets=[0, 10**9]), "malformed")
    other = get_builtin("BP-LORA-R8").SerializeToString()
    check(lambda h: h["__metadata__"].update(blueprint=base64.b64encode(other).decode()),
          "do not match|is F32")
    bad_spec = get_builtin("BP-MLP-GELU")
    bad_spec.graph.nodes[0].op = 999
    check(lambda h: h["__metadata__"].update(
        blueprint=base64.b64encode(bad_spec.SerializeToString()).decode()), "blueprint is invalid")

    def f64(h):
        h["ops.fc1.bias"]["dtype"] = "F64"
        lo, hi = h["ops.fc1.bias"]["data_offsets"]
        h["ops.fc1.bias"]["data_offsets"] = [lo, lo + (hi - lo) // 2]
    with pytest.raises(KernelFormatError):
        bad = resign(data, f64)
        unpack_kernel(bad, sha256_hex(bad))


def test_oversized_header_length_is_refused_before_parsing():
    data = struct.pack("<Q", 2**40) + b"{}"
    with pytest.raises(KernelFormatError, match="header length"):
        unpack_kernel(data, sha256_hex(data))


def test_targets_give_distinct_artifacts():
    from esper.leyline.v1 import kernel_pb2

    spec, shape, module, _ = packed()
    cpu = kernel_pb2.KernelTarget(device="cpu", dtype=1, shape=shape, torch_version="2.13.0")
    cuda = kernel_pb2.KernelTarget(device="cuda", dtype=1, shape=shape, torch_version="2.13.0")
    a = pack_kernel(spec, shape, module, target=cpu)
    b = pack_kernel(spec, shape, module, target=cuda)
    assert sha256_hex(a) != sha256_hex(b)
    assert pack_kernel(spec, shape, module, target=cpu) == a
    _, _, rebuilt = unpack_kernel(b, sha256_hex(b))
    assert rebuilt.state_dict().keys() == module.state_dict().keys()
