"""Access to the Leyline v1 descriptors for the contract tests."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

import esper.leyline.v1 as leyline_v1

PACKAGE = "esper.leyline.v1"
ROOT = Path(__file__).resolve().parents[2]
RELEASED = ROOT / "proto" / "released" / "leyline-v1.0.0.binpb"
GENERATED_SET = ROOT / "gen" / "esper" / "leyline" / "v1" / "leyline_v1.binpb"


def pb2_modules() -> list:
    names = [m.name for m in pkgutil.iter_modules(leyline_v1.__path__) if m.name.endswith("_pb2")]
    return [importlib.import_module(f"{PACKAGE}.{n}") for n in sorted(names)]


def files() -> list[FileDescriptor]:
    return [m.DESCRIPTOR for m in pb2_modules()]


def all_messages() -> list[Descriptor]:
    out: list[Descriptor] = []

    def walk(desc: Descriptor) -> None:
        if desc.GetOptions().map_entry:
            return
        out.append(desc)
        for nested in desc.nested_types:
            walk(nested)

    for f in files():
        for desc in f.message_types_by_name.values():
            walk(desc)
    return out


def all_enums() -> list[EnumDescriptor]:
    out = []
    for f in files():
        out.extend(f.enum_types_by_name.values())
    for m in all_messages():
        out.extend(m.enum_types)
    return out


def load_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(path.read_bytes())
    return fds
