"""Two DDP ranks (gloo, spawned processes) under a real Tamiyo whose candidates come from
a real Urza: rank 0 alone opens the run's Tamiyo session and downloads the kernel; the
other rank never connects to either and gets the kernel (digest-verified) and every
decision from rank 0. Tamiyo germinates on a flat validation loss and takes the seed to
its end; both ranks finish with identical tensors. Workers: tests/unit/ddp_workers.py."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.test_tamiyo_server import tamiyo
from tests.integration.test_tolaria_urza import urza_with_kernel  # noqa: F401 - a fixture
from tests.unit.ddp_workers import SHORT_HEURISTIC, RunSpec
from tests.unit.test_tolaria_distributed import assert_replicas_identical, launch, ok

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.usefixtures("one_torch_thread")]
MAX_STEPS = 3000


async def test_remote_tamiyo_drives_two_ranks_from_rank_0(urza_with_kernel, tmp_path):  # noqa: F811
    urza, kernel, _data = urza_with_kernel
    thresholds = tmp_path / "heuristic.toml"
    thresholds.write_text("".join(f"{k} = {v}\n" for k, v in SHORT_HEURISTIC.items()))
    async with tamiyo(urza_address=urza.address, urza_timeout_s=5.0, snapshot_every_steps=2,
                      heuristic_config=str(thresholds)) as (running, _stub, _channel):
        spec = RunSpec(out=str(tmp_path / "run"), world=2, policy="remote", steps=MAX_STEPS,
                       tamiyo=running.address, urza=urza.address, flat_validation=True,
                       stop_after_seed=10, run_id="run-ddp-remote")
        results = ok(await asyncio.to_thread(launch, spec))
    assert_replicas_identical(results)
    leader, follower = results
    assert leader["connects"] >= 1 and follower["connects"] == 0
    assert leader["summary"]["seeds_germinated"] >= 1 and leader["steps"] < MAX_STEPS
    assert leader["kernels"] == follower["kernels"] == [kernel.kernel_id]
