"""buf's STANDARD and COMMENTS lint rules, enforced on the descriptors themselves (and by
`buf lint` too when the buf binary is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2

from tests.contract.leyline_descriptors import (
    GENERATED_SET,
    PACKAGE,
    ROOT,
    all_enums,
    all_messages,
    files,
    load_set,
)

UPPER_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def _enum_prefix(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"


def test_package_and_paths():
    for f in files():
        assert f.package == PACKAGE
        assert f.name.startswith("esper/leyline/v1/")


def test_message_and_field_names():
    for msg in all_messages():
        assert UPPER_CAMEL.match(msg.name), msg.full_name
        for field in msg.fields:
            assert LOWER_SNAKE.match(field.name), f"{msg.full_name}.{field.name}"


def test_enum_values_prefixed_and_zero_unspecified():
    for enum in all_enums():
        prefix = _enum_prefix(enum.name)
        assert enum.values[0].number == 0
        assert enum.values[0].name == prefix + "UNSPECIFIED", enum.full_name
        for value in enum.values:
            assert value.name.startswith(prefix), value.name
            assert UPPER_SNAKE.match(value.name), value.name


def test_services_and_rpc_messages():
    services = [s for f in files() for s in f.services_by_name.values()]
    assert {s.name for s in services} == {
        "TamiyoService", "UrzaService", "TezzeretService", "NissaService"
    }
    for service in services:
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request", method.full_name
            assert method.output_type.name == f"{method.name}Response", method.full_name
    session = next(s for s in services if s.name == "TamiyoService").methods_by_name["Session"]
    assert session.client_streaming and session.server_streaming


def _comments_by_path(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple, str]:
    return {
        tuple(loc.path): (loc.leading_comments or loc.trailing_comments).strip()
        for loc in fd.source_code_info.location
    }


def _missing_comments(fd: descriptor_pb2.FileDescriptorProto) -> list[str]:
    comments = _comments_by_path(fd)
    missing = []

    def need(path: tuple, what: str) -> None:
        if not comments.get(path):
            missing.append(f"{fd.name}: {what}")

    def walk_message(msg, path, prefix):
        need(path, prefix + msg.name)
        for i, field in enumerate(msg.field):
            need(path + (2, i), f"{prefix}{msg.name}.{field.name}")
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                walk_message(nested, path + (3, i), f"{prefix}{msg.name}.")
        for i, enum in enumerate(msg.enum_type):
            walk_enum(enum, path + (4, i))

    def walk_enum(enum, path):
        need(path, enum.name)
        for i, value in enumerate(enum.value):
            need(path + (2, i), value.name)

    for i, msg in enumerate(fd.message_type):
        walk_message(msg, (4, i), "")
    for i, enum in enumerate(fd.enum_type):
        walk_enum(enum, (5, i))
    for i, service in enumerate(fd.service):
        need((6, i), service.name)
        for j, method in enumerate(service.method):
            need((6, i, 2, j), f"{service.name}.{method.name}")
    return missing


def test_every_element_has_a_comment():
    fds = load_set(GENERATED_SET)
    missing = []
    for fd in fds.file:
        if fd.package == PACKAGE:
            missing.extend(_missing_comments(fd))
    assert not missing, "uncommented elements:\n" + "\n".join(missing)


@pytest.mark.skipif(shutil.which("buf") is None, reason="buf binary not installed")
def test_buf_lint():
    result = subprocess.run(["buf", "lint"], cwd=ROOT / "proto", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
