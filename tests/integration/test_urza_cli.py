"""`esper catalog` against a real Urza: tables for list/show/kernels/search, clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from esper.cli.main import main
from tests.integration.test_urza import Urza, close_urza, open_urza, store_and_register, urza_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def urza(fresh_database, fresh_bucket, kafka_bootstrap) -> AsyncIterator[Urza]:
    started = await open_urza(urza_config(fresh_database, fresh_bucket, kafka_bootstrap))
    try:
        yield started
    finally:
        await close_urza(started)


async def esper(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it is synchronous; the server runs on this loop)."""
    code = await asyncio.to_thread(main, ["catalog", *argv])
    out, err = capsys.readouterr()
    return code, out, err


async def test_list_and_show(urza: Urza, capsys) -> None:
    code, out, _ = await esper(capsys, "list", "--urza", urza.running.address)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["BLUEPRINT", "FAMILY", "STATE"]
    assert any(line.startswith("BP-MLP-GELU@1.0.0") and "SUBMITTED" in line for line in lines)
    assert lines[-1].endswith("blueprint(s)")
    code, out, _ = await esper(capsys, "list", "--family", "conv", "--urza", urza.running.address)
    rows = [line for line in out.splitlines()[1:-1]]
    assert code == 0 and rows and all(" CONV " in row for row in rows)
    code, out, _ = await esper(capsys, "show", "BP-LORA-R8@1.0.0", "--urza", urza.running.address)
    assert code == 0 and "family        ADAPTER" in out and "graph:" in out and "no kernels yet" in out


async def test_kernels_and_search(urza: Urza, capsys, monkeypatch) -> None:
    small = await store_and_register(urza, "BP-IA3@1.0.0", params=16)
    large = await store_and_register(urza, "BP-MLP-GELU@1.0.0", params=50_000)
    monkeypatch.setenv("ESPER_URZA_ADDRESS", urza.running.address)
    code, out, _ = await esper(capsys, "kernels", "--blueprint", "BP-IA3@1.0.0")
    assert code == 0 and small.kernel_id in out and large.kernel_id not in out
    code, out, _ = await esper(capsys, "search", "--channels", "8", "--kind", "features")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["#", "SCORE", "KERNEL"]
    assert small.kernel_id in lines[1] and large.kernel_id in out
    code, out, _ = await esper(capsys, "search", "--channels", "8", "--max-params", "1000")
    assert code == 0 and small.kernel_id in out and large.kernel_id not in out


async def test_bad_input_is_a_clear_error(urza: Urza, capsys) -> None:
    address = urza.running.address
    code, _, err = await esper(capsys, "show", "BP-MLP-GELU@1.0", "--urza", address)
    assert code == 2 and "NAME@VERSION" in err and "semantic version" in err
    code, _, err = await esper(capsys, "show", "BP-NOPE@1.0.0", "--urza", address)
    assert code == 1 and "NOT_FOUND" in err and "BP-NOPE@1.0.0" in err
    code, _, err = await esper(capsys, "list", "--urza", "not-an-address")
    assert code == 2 and "--urza" in err
    with pytest.raises(SystemExit) as exited:
        await esper(capsys, "search", "--channels", "-3", "--urza", address)
    assert exited.value.code == 2 and "negative" in capsys.readouterr().err
    code, _, err = await esper(capsys, "search", "--channels", "8", "--max-risk", "3", "--urza", address)
    assert code == 2 and "--max-risk" in err


async def test_unreachable_urza(capsys) -> None:
    from esper.runtime.infra import free_port

    code, _, err = await esper(capsys, "list", "--urza", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1 and "cannot reach Urza" in err


def _closed_pipe_run(argv: list[str]) -> tuple[int, str]:
    """Run `esper argv` with stdout a pipe whose reader is already gone (`esper … | head`
    after head has exited)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "esper.cli.main", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


async def test_a_closed_output_pipe_ends_quietly(urza: Urza) -> None:
    from esper.cli.main import EXIT_BROKEN_PIPE

    code, err = await asyncio.to_thread(_closed_pipe_run, ["catalog", "list", "--urza",
                                                           urza.running.address])
    assert code == EXIT_BROKEN_PIPE and err == "", err
    # argparse's help leaves the failing write to the interpreter's last flush: still quiet.
    code, err = await asyncio.to_thread(_closed_pipe_run, ["--help"])
    assert code in (0, EXIT_BROKEN_PIPE) and err == "", err
