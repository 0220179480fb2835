"""The pure parts of benchmarks/bench_tamiyo_session.py: reading a py-spy profile and the
floors the GNN's many-session latency is judged against."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_tamiyo_session as bench  # noqa: E402

RAW = """\
_run_module_as_main (<frozen runpy>:198);main (esper/cli/main.py:10);_run_once (asyncio/base_events.py:1900);EpollSelector.select (selectors.py:468) 40
_run_module_as_main (<frozen runpy>:198);main (esper/cli/main.py:10);_run_once (asyncio/base_events.py:1910);Handle._run (asyncio/events.py:80) 30
_run_module_as_main (<frozen runpy>:198);main (esper/cli/main.py:10);_run_once (asyncio/base_events.py:1910);Handle._run (asyncio/events.py:84);decide (esper/tamiyo/session.py:55) 10
Thread._bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:81) 25
Thread._bootstrap (threading.py:995);_worker (concurrent/futures/thread.py:83);GnnPolicy.decide_batch (esper/tamiyo/policies/gnn.py:120);PolicyNet.infer (esper/tamiyo/policies/network.py:77) 20
not a sample line
"""


def test_top_functions_counts_busy_samples_only(tmp_path: Path) -> None:
    raw = tmp_path / "server.txt"
    raw.write_text(RAW)
    profile = bench.top_functions(raw)
    assert profile["busy_samples"] == 60  # 30 + 10 + 20; the select and the idle worker not
    assert profile["idle_samples"] == 65
    assert profile["self"] == {"Handle._run (events.py)": 0.5, "PolicyNet.infer (network.py)": 0.3333,
                               "decide (session.py)": 0.1667}
    # Functions on the same busy stacks are listed once, by the deepest of them:
    # Handle._run for the event loop's chain, PolicyNet.infer for the worker thread's.
    assert profile["total"] == {"Handle._run (events.py)": 0.6667,
                                "PolicyNet.infer (network.py)": 0.3333,
                                "decide (session.py)": 0.1667}


def test_top_functions_lists_a_branching_chain_once(tmp_path: Path) -> None:
    raw = tmp_path / "client.txt"
    raw.write_text("main (bench.py:1);run (runners.py:2);work (bench.py:3) 9\n"
                   "main (bench.py:1);run (runners.py:2);other (bench.py:4) 1\n")
    profile = bench.top_functions(raw, top=5)
    assert profile["total"] == {"run (runners.py)": 1.0, "work (bench.py)": 0.9, "other (bench.py)": 0.1}
    assert profile["self"] == {"work (bench.py)": 0.9, "other (bench.py)": 0.1}
    assert bench.top_functions(raw, top=1)["total"] == {"run (runners.py)": 1.0}


def test_top_functions_of_an_empty_profile(tmp_path: Path) -> None:
    raw = tmp_path / "empty.txt"
    raw.write_text("")
    assert bench.top_functions(raw) == {"busy_samples": 0, "idle_samples": 0, "self": {}, "total": {}}


def test_floors_are_ratios_to_the_gnn_one_session_p50(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    gnn = {"one_session": {"p50_ms": 2.0},
           "16_sessions": {"p50_ms": 14.0, "cpu_ms_per_decision": {"server": 0.5, "client": 0.25}}}
    floors = bench.floors({"p50_ms": 3.0}, {"p50_ms": 6.0}, gnn, 16)
    assert floors == {"bare_echo": 1.5, "heuristic": 3.0,
                      "cpu_bound_cycle": pytest.approx(16 * 0.75 / 2 / 2.0)}
    del gnn["16_sessions"]["cpu_ms_per_decision"]  # the multi-process server's: not measured
    assert "cpu_bound_cycle" not in bench.floors({"p50_ms": 3.0}, {"p50_ms": 6.0}, gnn, 16)
