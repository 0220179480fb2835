"""Input validation of the infrastructure launchers: ports, names, binaries, directories."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from esper.runtime.infra import postgres
from esper.runtime.infra.errors import InfraConfigError, MissingBinaryError
from esper.runtime.infra.objectstore import validate_bucket_name
from esper.runtime.infra.ports import validate_port
from esper.runtime.infra.postgres import find_binary, validate_database_name
from esper.runtime.infra.privilege import ServiceUser, ensure_reachable


@pytest.mark.parametrize("value, expected", [(1, 1), (65535, 65535), ("5432", 5432), (" 80 ", 80)])
def test_valid_ports(value: object, expected: int) -> None:
    assert validate_port(value, "postgres") == expected


@pytest.mark.parametrize("value", [0, -1, 65536, "abc", "", "12.5", 3.0, None, True, "1e3"])
def test_invalid_ports_name_the_component(value: object) -> None:
    with pytest.raises(InfraConfigError, match="^postgres: port"):
        validate_port(value, "postgres")


@pytest.mark.parametrize("name", ["esper", "test_0123abc", "_x"])
def test_valid_database_names(name: str) -> None:
    assert validate_database_name(name) == name


@pytest.mark.parametrize("name", ["", "Esper", "1abc", 'x"; DROP', "a-b", "x" * 64])
def test_invalid_database_names(name: str) -> None:
    with pytest.raises(InfraConfigError, match="database name"):
        validate_database_name(name)


@pytest.mark.parametrize("name", ["esper", "esper-test", "a.b.c"])
def test_valid_bucket_names(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize("name", ["ab", "Esper", "-abc", "abc-", "a_b_c", "x" * 64])
def test_invalid_bucket_names(name: str) -> None:
    with pytest.raises(InfraConfigError, match="bucket name"):
        validate_bucket_name(name)


def test_missing_postgres_binary_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", str(tmp_path / "none" / "*" / "bin"))
    with pytest.raises(MissingBinaryError, match="apt-get install -y postgresql-15"):
        find_binary("initdb")


def test_postgres_binary_found_in_the_newest_debian_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for version in ("9.6", "15", "13"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        (bindir / "initdb").write_text("")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(postgres, "DEBIAN_BIN_GLOB", str(tmp_path / "*" / "bin"))
    assert find_binary("initdb") == str(tmp_path / "15" / "bin" / "initdb")


def test_unsearchable_directory_is_named() -> None:
    # Not tmp_path: pytest's base temp dir is itself private (0700).
    base = Path(tempfile.mkdtemp())
    os.chmod(base, 0o755)
    locked = base / "locked"
    (locked / "state").mkdir(parents=True)
    os.chmod(locked, 0o700)
    # A user that owns nothing here and is not in the directory's group.
    stranger = ServiceUser(
        "stranger", uid=os.geteuid() + 12345, gid=os.getegid() + 12345, drop=True
    )
    with pytest.raises(InfraConfigError, match=f"directory {locked} is not searchable"):
        ensure_reachable(locked / "state", stranger)
    os.chmod(locked, 0o755)
    try:
        ensure_reachable(locked / "state", stranger)
    finally:
        shutil.rmtree(base)


def test_no_switch_no_reachability_check(tmp_path: Path) -> None:
    me = ServiceUser("me", os.geteuid(), os.getegid(), drop=False)
    assert me.popen_kwargs() == {}
    ensure_reachable(tmp_path, me)


def test_namespace_user_wraps_argv_and_keeps_host_ownership() -> None:
    inside = ServiceUser("nobody", uid=65534, gid=65534, drop=False, namespace=True)
    assert inside.wrap(["postgres", "-D", "x"]) == [
        "unshare", "--user", "--map-user=65534", "--map-group=65534", "--", "postgres", "-D", "x"]
    assert inside.popen_kwargs() == {}
    assert inside.host_uid == os.geteuid()
    assert ServiceUser("me", 1, 1, drop=False).wrap(["a"]) == ["a"]


def test_namespace_user_cannot_cross_another_users_private_directory() -> None:
    base = Path(tempfile.mkdtemp())
    os.chmod(base, 0o755)
    theirs = base / "theirs"
    (theirs / "state").mkdir(parents=True)
    inside = ServiceUser("nobody", uid=65534, gid=65534, drop=False, namespace=True)
    try:
        os.chmod(theirs, 0o700)
        ensure_reachable(theirs / "state", inside)  # ours, private: fine (we own it)
        if os.geteuid() == 0:
            os.chown(theirs, 12345, 12345)
            with pytest.raises(InfraConfigError, match=f"directory {theirs} belongs"):
                ensure_reachable(theirs / "state", inside)
    finally:
        shutil.rmtree(base)
