"""Guards wire compatibility against the released v1 descriptor set: no field renumbered,
retyped or removed without `reserved`; no enum value renumbered or removed; no RPC removed or
changed."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2

from tests.contract.leyline_descriptors import PACKAGE, RELEASED, ROOT, files, load_set


def _current_set() -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    for f in files():
        f.CopyToProto(fds.file.add())
    return fds


def _index(fds: descriptor_pb2.FileDescriptorSet):
    messages, enums, services = {}, {}, {}

    def walk(msg, prefix):
        name = f"{prefix}.{msg.name}"
        messages[name] = msg
        for nested in msg.nested_type:
            walk(nested, name)
        for enum in msg.enum_type:
            enums[f"{name}.{enum.name}"] = enum

    for fd in fds.file:
        if fd.package != PACKAGE:
            continue
        for msg in fd.message_type:
            walk(msg, fd.package)
        for enum in fd.enum_type:
            enums[f"{fd.package}.{enum.name}"] = enum
        for service in fd.service:
            services[f"{fd.package}.{service.name}"] = service
    return messages, enums, services


def _reserved(msg) -> tuple[set[int], set[str]]:
    numbers = {n for r in msg.reserved_range for n in range(r.start, r.end)}
    return numbers, set(msg.reserved_name)


def compat_problems(old_set, new_set) -> list[str]:
    old_msgs, old_enums, old_services = _index(old_set)
    new_msgs, new_enums, new_services = _index(new_set)
    problems = []
    for name, old in old_msgs.items():
        new = new_msgs.get(name)
        if new is None:
            problems.append(f"message {name} removed")
            continue
        by_number = {f.number: f for f in new.field}
        reserved_numbers, _ = _reserved(new)
        for field in old.field:
            now = by_number.get(field.number)
            if now is None:
                if field.number not in reserved_numbers:
                    problems.append(f"{name}.{field.name} (#{field.number}) removed without reserved")
                continue
            if (now.type, now.type_name, now.label) != (field.type, field.type_name, field.label):
                problems.append(f"{name}.{field.name} (#{field.number}) changed type or label")
            if now.name != field.name:
                problems.append(f"{name} field #{field.number} renamed {field.name} -> {now.name} (breaks JSON)")
            if now.HasField("oneof_index") != field.HasField("oneof_index"):
                problems.append(f"{name}.{field.name} moved in or out of a oneof")
    for name, old in old_enums.items():
        new = new_enums.get(name)
        if new is None:
            problems.append(f"enum {name} removed")
            continue
        numbers = {v.name: v.number for v in new.value}
        reserved = {n for r in new.reserved_range for n in range(r.start, r.end + 1)}
        for value in old.value:
            if value.name not in numbers and value.number not in reserved:
                problems.append(f"enum value {value.name} removed without reserved")
            elif value.name in numbers and numbers[value.name] != value.number:
                problems.append(f"enum value {value.name} renumbered")
    for name, old in old_services.items():
        new = new_services.get(name)
        if new is None:
            problems.append(f"service {name} removed")
            continue
        methods = {m.name: m for m in new.method}
        for method in old.method:
            now = methods.get(method.name)
            if now is None:
                problems.append(f"rpc {name}.{method.name} removed")
            elif (now.input_type, now.output_type, now.client_streaming, now.server_streaming) != (
                method.input_type, method.output_type, method.client_streaming, method.server_streaming
            ):
                problems.append(f"rpc {name}.{method.name} changed signature")
    return problems


def test_current_contract_is_wire_compatible_with_release():
    assert compat_problems(load_set(RELEASED), _current_set()) == []


def test_guard_detects_renumbered_retyped_and_removed_fields():
    released = load_set(RELEASED)
    for mutate, expect in (
        (lambda f: setattr(f, "number", f.number + 100), "removed without reserved"),
        (lambda f: setattr(f, "type", descriptor_pb2.FieldDescriptorProto.TYPE_BYTES), "changed type"),
    ):
        broken = descriptor_pb2.FileDescriptorSet()
        broken.CopyFrom(released)
        fd = next(f for f in broken.file if f.name.endswith("control.proto"))
        msg = next(m for m in fd.message_type if m.name == "DecisionAck")
        mutate(msg.field[0])
        problems = compat_problems(released, broken)
        assert any(expect in p for p in problems), problems
    removed = descriptor_pb2.FileDescriptorSet()
    removed.CopyFrom(released)
    fd = next(f for f in removed.file if f.name.endswith("control.proto"))
    msg = next(m for m in fd.message_type if m.name == "DecisionAck")
    number = msg.field[-1].number
    del msg.field[-1]
    assert any("removed without reserved" in p for p in compat_problems(released, removed))
    msg.reserved_range.add(start=number, end=number + 1)
    assert compat_problems(released, removed) == []


@pytest.mark.skipif(shutil.which("buf") is None, reason="buf binary not installed")
def test_buf_breaking_against_release():
    result = subprocess.run(
        ["buf", "breaking", "--against", str(RELEASED)], cwd=ROOT / "proto",
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
