"""Tolaria under torch.distributed: 2 ranks (gloo, CPU, torch.multiprocessing.spawn) train a
tiny MLP with DistributedDataParallel through the plain hook API. A scripted policy on
rank 0 germinates, blends, fossilizes (one seed merged into the host, one residual) and
culls; both ranks end with identical tensors (a digest of each), the same transitions at
the same steps and the same seed ids, and within float tolerance of one process training
on the same global batch. Checkpoints written by rank 0 resume on another world size.
The local heuristic runs with DDP wrapped after attach; a replica that drifts stops.
Workers: tests/unit/ddp_workers.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from esper.kasmina.cache import KernelDigestMismatch
from esper.leyline.v1.control_pb2 import GerminateAction
from esper.tolaria import TolariaConfig, attach
from tests.unit.ddp_workers import RunSpec, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS, CHECKPOINT_AT = 40, 20
# One process on the whole batch against two on halves: the same sums in another order
# (float32 roundings), compounded over STEPS momentum steps.
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def launch(spec: RunSpec) -> list[dict]:
    """Run `spec` on its world size (one process in this one; more spawned); each rank's
    result."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    spec.init_file = str(out / "process-group")
    if spec.world == 1:
        run(0, spec)
    else:
        mp.spawn(run, args=(spec,), nprocs=spec.world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(spec.world)]


def ok(results: list[dict]) -> list[dict]:
    for rank, result in enumerate(results):
        assert "error" not in result, f"rank {rank}: {result.get('traceback')}"
    return results


def tensors(out: Path, rank: int = 0) -> dict[str, torch.Tensor]:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def stages(result: dict) -> list[tuple]:
    """Transitions without seed ids (those are random per run, equal across ranks)."""
    return [(slot, a, b, step) for slot, _seed, a, b, step in result["transitions"]]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOLERANCE, msg=key)


def assert_replicas_identical(results: list[dict]) -> None:
    first = results[0]
    for other in results[1:]:
        assert other["digests"] == first["digests"]  # every tensor, bit for bit
        assert other["transitions"] == first["transitions"]  # seed ids included
        assert other["acks"] == first["acks"]
        assert other["summary"] == first["summary"]


@pytest.mark.slow
def test_two_ranks_stay_identical_through_every_kind_of_seed_change(tmp_path) -> None:
    results = ok(launch(RunSpec(out=str(tmp_path / "ddp"), world=2, steps=STEPS,
                                checkpoint_at=CHECKPOINT_AT)))
    assert_replicas_identical(results)
    reached = {(slot, b) for slot, _s, _a, b, _step in results[0]["transitions"]}
    assert {("0", "SEED_STAGE_GERMINATED"), ("0", "SEED_STAGE_BLENDING"),
            ("0", "SEED_STAGE_FOSSILIZED"), ("2", "SEED_STAGE_CULLED"),
            ("2", "SEED_STAGE_FOSSILIZED")} <= reached
    assert results[0]["summary"] == {"seeds_germinated": 3, "seeds_fossilized": 2,
                                     "seeds_culled": 1}
    ddp = tensors(tmp_path / "ddp")
    assert any(k.startswith("esper_slots.2.seed.") for k in ddp)  # the residual fossil
    assert not any(k.startswith("esper_slots.0.seed.") for k in ddp)  # LoRA merged

    # One process on the same global batches: the same decisions at the same steps, the
    # same snapshots (the ranks' metrics were reduced), the same weights up to rounding.
    single = ok(launch(RunSpec(out=str(tmp_path / "single"), world=1, steps=STEPS,
                               checkpoint_at=CHECKPOINT_AT)))[0]
    assert stages(single) == stages(results[0])
    assert [a[1] for a in single["acks"]] == [a[1] for a in results[0]["acks"]]
    got, want = torch.tensor(results[0]["snapshots"]), torch.tensor(single["snapshots"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert_close(ddp, tensors(tmp_path / "single"))

    # Rank 0's checkpoint resumes in one process, and the single run's on two ranks
    # (replaying the decision log, since the scripted policy keeps no state).
    resumed_1 = ok(launch(RunSpec(out=str(tmp_path / "resume-1"), world=1, steps=STEPS,
                                  policy="replay", resume=str(tmp_path / "ddp" / "run.pt"),
                                  decisions=str(tmp_path / "ddp" / "decisions.json"))))[0]
    assert stages(resumed_1) == [t for t in stages(results[0]) if t[3] > CHECKPOINT_AT]
    assert_close(tensors(tmp_path / "resume-1"), ddp)
    resumed_2 = ok(launch(RunSpec(out=str(tmp_path / "resume-2"), world=2, steps=STEPS,
                                  policy="replay", resume=str(tmp_path / "single" / "run.pt"),
                                  decisions=str(tmp_path / "single" / "decisions.json"))))
    assert_replicas_identical(resumed_2)
    assert stages(resumed_2[0]) == [t for t in stages(single) if t[3] > CHECKPOINT_AT]
    assert_close(tensors(tmp_path / "resume-2"), tensors(tmp_path / "single"))


@pytest.mark.slow
def test_local_policy_with_ddp_wrapped_after_attach(tmp_path) -> None:
    """The heuristic on rank 0 (a flat validation loss: it germinates), the user wrapping
    DDP(session.model) after attach: the seeds it adds later stay out of DDP's reducer."""
    results = ok(launch(RunSpec(out=str(tmp_path), world=2, policy="local", steps=400,
                                flat_validation=True, wrap_after_attach=True,
                                stop_after_seed=10)))
    assert_replicas_identical(results)
    assert results[0]["summary"]["seeds_germinated"] >= 1
    assert results[0]["steps"] < 400  # a seed came to its end
    ignored = results[0]["ddp_ignored"]  # DDP leaves the slots' tensors (buffers) alone
    assert ignored and all(name.startswith("esper_slots.") for name in ignored)


@pytest.mark.slow
def test_trainer_with_a_ddp_model_and_distributed_samplers(tmp_path) -> None:
    results = ok(launch(RunSpec(out=str(tmp_path), world=2, steps=STEPS, trainer=True)))
    assert_replicas_identical(results)
    assert results[0]["epochs"] == STEPS // 10 and results[0]["steps"] == STEPS
    assert results[0]["summary"]["seeds_germinated"] >= 2
    assert (tmp_path / f"fit-{STEPS // 10}.pt").is_file()  # written by rank 0


@pytest.mark.slow
def test_a_replica_that_drifts_stops_the_run(tmp_path) -> None:
    results = launch(RunSpec(out=str(tmp_path), world=2, steps=STEPS, diverge_at=5))
    assert "ReplicaDivergence" in results[1].get("error", ""), results[1]
    assert "seed-tampered" in results[1]["error"]
    assert "error" in results[0]  # its peer is gone: rank 0 does not train on alone


@pytest.mark.slow
def test_the_residual_stream_widens_under_ddp_wrapped_after_attach(tmp_path) -> None:
    """A transformer's stream widens twice on two ranks: DDP (built after attach) keeps the
    layer off the stream, Tolaria averages the stream's gradients and moves with each
    widening; the replicas stay identical and match one process on the whole batch."""
    spec = dict(world=2, steps=14, epoch_steps=7, stream=True, wrap_after_attach=True)
    results = ok(launch(RunSpec(out=str(tmp_path / "ddp"), **spec)))
    assert results[0]["digests"] == results[1]["digests"]  # bit for bit
    assert [a[:2] for a in results[0]["acks"]] == [["widen-0", "ACK_STATUS_APPLIED"],
                                                  ["widen-1", "ACK_STATUS_APPLIED"]]
    assert results[0]["width"] == results[1]["width"] == 12
    assert results[0]["ddp"] == "DistributedDataParallel"
    ignored = results[0]["ddp_ignored"]  # the stream's parameters, not the layer after it
    assert "host.tok.weight" in ignored and "host.blocks.0.linear1.weight" in ignored
    assert not any(name.startswith("host.out.") for name in ignored)
    single = ok(launch(RunSpec(out=str(tmp_path / "single"), **{**spec, "world": 1})))[0]
    assert single["width"] == 12
    assert_close(tensors(tmp_path / "ddp"), tensors(tmp_path / "single"))
    # Rank 0's checkpoint after the first widening resumes on two ranks at width 10, widens
    # again and ends where the uninterrupted run did.
    part = ok(launch(RunSpec(out=str(tmp_path / "part"), **{**spec, "steps": 7}, checkpoint_at=7)))
    assert part[0]["width"] == 10
    resumed = ok(launch(RunSpec(out=str(tmp_path / "resumed"), **spec,
                                resume=str(tmp_path / "part" / "run.pt"))))
    assert resumed[0]["digests"] == resumed[1]["digests"] and resumed[0]["width"] == 12
    assert_close(tensors(tmp_path / "resumed"), tensors(tmp_path / "ddp"))


@pytest.mark.slow
def test_the_trainer_rewraps_a_ddp_model_whose_stream_may_widen(tmp_path) -> None:
    results = ok(launch(RunSpec(out=str(tmp_path), world=2, steps=14, epoch_steps=7, stream=True,
                                trainer=True)))
    assert results[0]["digests"] == results[1]["digests"]
    assert results[0]["acks"] == [["widen-0", "ACK_STATUS_APPLIED"], ["widen-1", "ACK_STATUS_APPLIED"]]
    assert results[0]["width"] == 12 and results[0]["ddp"] == "DistributedDataParallel"


@pytest.mark.slow
def test_a_ddp_built_before_attach_keeps_the_stream_and_says_how_to_let_it_grow(tmp_path) -> None:
    results = ok(launch(RunSpec(out=str(tmp_path), world=2, steps=8, epoch_steps=4, stream=True)))
    assert results[0]["digests"] == results[1]["digests"]
    assert results[0]["width"] == 8
    status, reason = results[0]["acks"][0][1:]
    assert status == "ACK_STATUS_REJECTED" and "DistributedDataParallel(session.model)" in reason


def test_a_kernel_from_rank_0_is_verified_before_use() -> None:
    """A rank takes a germinated seed's kernel from rank 0's broadcast, never unverified."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    session = attach(model, torch.optim.SGD(model.parameters(), lr=0.1), "none", slots=["0"],
                     config=TolariaConfig(progress=False))
    genuine = b"kernel bytes"
    action = GerminateAction(slot_id="0", blueprint_ref="BP-IA3@1.0.0", kernel_id="k-1",
                             kernel_sha256=hashlib.sha256(genuine).hexdigest())
    with pytest.raises(KernelDigestMismatch):
        session.receive_kernel(action, b"other bytes")
    assert "k-1" not in session.cache
    session.close()
