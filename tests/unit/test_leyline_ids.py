"""The id formats of esper.leyline.ids: what each maker makes matches its pattern, and
the checkers refuse what does not."""

from __future__ import annotations

import hashlib

import pytest
import torch

from esper.blueprints import kernel_id_for as artifact_kernel_id
from esper.blueprints.builder import build_seed
from esper.blueprints.catalog import get_builtin
from esper.blueprints.errors import KernelFormatError
from esper.kasmina import wrap
from esper.leyline import ids
from esper.tezzeret.servicer import check_job_id
from esper.tolaria import TolariaConfig
from esper.urza.errors import InvalidArgument
from esper.urza.validate import kernel_id as urza_kernel_id


def test_every_maker_matches_its_pattern():
    for _ in range(50):
        assert ids.RUN_ID_PATTERN.fullmatch(ids.new_run_id())
        assert ids.SEED_ID_PATTERN.fullmatch(ids.new_seed_id())
        assert ids.UUID_PATTERN.fullmatch(ids.new_decision_id())
        assert ids.UUID_PATTERN.fullmatch(ids.new_session_id())
        assert ids.UUID_PATTERN.fullmatch(ids.new_event_id())
        assert ids.JOB_ID_PATTERN.fullmatch(ids.new_job_id())
    assert TolariaConfig().run_id.startswith(ids.RUN_ID_PREFIX)


def test_kernel_ids_are_content_derived_the_same_way_everywhere():
    digest = hashlib.sha256(b"kernel").hexdigest()
    kid = ids.kernel_id_for(digest)
    assert kid == "k-" + digest[:16] == artifact_kernel_id(digest)
    assert urza_kernel_id(kid) == kid
    for bad in ("", "A" * 64, digest[:-1], digest + "\n"):
        with pytest.raises(ValueError):
            ids.kernel_id_for(bad)
    with pytest.raises(KernelFormatError):
        artifact_kernel_id("nope")
    with pytest.raises(InvalidArgument):
        urza_kernel_id(kid + "0")


def test_job_ids_are_checked_against_the_pattern():
    job_id = ids.new_job_id()
    assert check_job_id(job_id) == job_id
    for bad in ("j-" + "A" * 32, job_id + "\n", "k-" + job_id[2:]):
        with pytest.raises(Exception, match="job_id"):
            check_job_id(bad)


def test_kasmina_names_a_germinated_seed_with_a_seed_id():
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    model = wrap(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)), example_input=x)
    slot = model.slots["0"]
    slot.germinate(build_seed(get_builtin("BP-MLP-GELU@1.0.0"), slot.shape, device=slot.device, dtype=slot.dtype),
                   step=0)
    assert ids.SEED_ID_PATTERN.fullmatch(slot.record.seed_id)
