"""How CLI commands find a server: flag, then env, then the local stack's stack.json."""

from __future__ import annotations

import json

import pytest

from esper.cli.addresses import checked_address, resolve_address, stack_address
from esper.cli.errors import UsageError
from esper.cli.runs import resolve_address as nissa_address

ENV = "ESPER_TEST_SERVER_ADDRESS"


@pytest.fixture
def stack_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ESPER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("ESPER_NISSA_ADDRESS", raising=False)
    return tmp_path


def test_flag_then_env_then_stack(stack_dir, monkeypatch) -> None:
    assert resolve_address(None, ENV, "urza") == ""
    (stack_dir / "stack.json").write_text(json.dumps({"ports": {"urza": 15051}}))
    assert resolve_address(None, ENV, "urza") == "127.0.0.1:15051"
    monkeypatch.setenv(ENV, "env:1")
    assert resolve_address(None, ENV, "urza") == "env:1"
    assert resolve_address("flag:2", ENV, "urza") == "flag:2"


def test_a_broken_stack_file_means_no_stack(stack_dir) -> None:
    (stack_dir / "stack.json").write_text("{not json")
    assert stack_address("urza") == ""
    (stack_dir / "stack.json").write_text(json.dumps({"ports": {"urza": "x"}}))
    assert stack_address("urza") == ""


def test_a_component_missing_from_the_stack(stack_dir) -> None:
    (stack_dir / "stack.json").write_text(json.dumps({"ports": {"broker": 19092}}))
    assert stack_address("nissa") == ""


def test_checked_address_names_the_option() -> None:
    assert checked_address("--urza", "h:1") == "h:1"
    with pytest.raises(UsageError, match="--urza"):
        checked_address("--urza", "no port")


def test_runs_without_any_nissa_address_is_a_usage_error(stack_dir) -> None:
    import argparse

    with pytest.raises(UsageError, match="no Nissa address: pass --nissa, set \\$ESPER_NISSA_ADDRESS"):
        nissa_address(argparse.Namespace())
    (stack_dir / "stack.json").write_text(json.dumps({"ports": {"nissa": 15054}}))
    assert nissa_address(argparse.Namespace()) == "127.0.0.1:15054"
    assert nissa_address(argparse.Namespace(nissa="n:3")) == "n:3"
