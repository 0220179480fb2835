"""Tezzeret's pure parts: submission validation, page tokens, the validation checks,
characterisation maths and the pipeline's determinism (tiny shapes, CPU)."""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import nn

from esper.blueprints import builtin_blueprints, get_builtin
from esper.leyline.v1 import blueprint_pb2, common_pb2, kernel_pb2
from esper.runtime.errors import InvalidArgument
from esper.tezzeret import submission
from esper.tezzeret.characterise import count_flops, cpu_peak_bytes, percentile
from esper.tezzeret.errors import InvalidSubmission, ValidationFailed
from esper.tezzeret.pipeline import PipelineSettings, build_kernel
from esper.tezzeret.servicer import check_job_id
from esper.tezzeret.validate import validate_seed


def features(c: int = 8) -> kernel_pb2.KernelTarget:
    return kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT32,
                                   shape=common_pb2.SlotShape(kind=common_pb2.SLOT_KIND_FEATURES, channels=c))


FAST = PipelineSettings(latency_samples=3, warmup_runs=0, try_export=False)


async def _noop(stage: str, detail: str) -> None:
    return None


def test_targets_are_checked_naming_the_field():
    spec = get_builtin("BP-ATTN-MHA")
    seq = kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT32, shape=common_pb2.SlotShape(
        kind=common_pb2.SLOT_KIND_SEQUENCE, channels=8, length=4))
    assert len(submission.check_targets(spec, [seq])) == 1
    cases = [
        ([], "targets"),
        ([features()], "targets[0].shape.kind"),
        ([kernel_pb2.KernelTarget(device="cpu", dtype=common_pb2.DTYPE_FLOAT16, shape=seq.shape)], "targets[0].dtype"),
        ([kernel_pb2.KernelTarget(device="cpu", dtype=1, shape=common_pb2.SlotShape(
            kind=common_pb2.SLOT_KIND_SEQUENCE, channels=8))], "targets[0].shape.length"),
        ([kernel_pb2.KernelTarget(device="cpu", dtype=1, shape=common_pb2.SlotShape(
            kind=common_pb2.SLOT_KIND_SEQUENCE, channels=7, length=4))], "targets[0].shape"),
        ([kernel_pb2.KernelTarget(device="cpu", dtype=1, torch_version="1.0.0", shape=seq.shape)], "targets[0].torch_version"),
        ([seq, seq], "targets[1]"),
        ([kernel_pb2.KernelTarget(device="cpu", dtype=1, shape=common_pb2.SlotShape(
            kind=common_pb2.SLOT_KIND_SEQUENCE, channels=4096, length=8192))], "targets[0].shape"),
    ]
    for targets, field in cases:
        with pytest.raises(InvalidSubmission) as err:
            submission.check_targets(spec, targets)
        assert err.value.field == field, (field, str(err.value))


def test_inline_blueprint_errors_name_op_and_attribute():
    spec = get_builtin("BP-MLP-GELU")
    spec.graph.nodes[0].attrs["out_features"].CopyFrom(blueprint_pb2.AttrValue(string_value="x"))
    with pytest.raises(InvalidSubmission) as err:
        submission.check_inline_blueprint(spec)
    assert err.value.field == "blueprint.graph.nodes[0].attrs.out_features"


def test_request_key_is_stable_and_distinguishes_targets():
    a = submission.request_key("BP-X@1.0.0", "d", [features(8)])
    assert a == submission.request_key("BP-X@1.0.0", "d", [features(8)])
    assert a != submission.request_key("BP-X@1.0.0", "d", [features(16)])
    assert a != submission.request_key("BP-X@1.0.0", "e", [features(8)])


def test_job_ids_are_checked_naming_the_field():
    job_id = "j-" + "a" * 32
    assert check_job_id(job_id) == job_id
    for bad in ("", "nope", "j-" + "A" * 32):
        with pytest.raises(InvalidArgument, match="^job_id: "):
            check_job_id(bad)


def test_percentiles():
    values = [float(v) for v in range(1, 201)]
    assert percentile(values, 0.99) == pytest.approx(198.01)
    assert percentile([1.0, 5.0, 3.0], 0.99) == 5.0  # too few samples: the maximum
    assert percentile([2.0], 0.5) == 2.0


def test_flops_and_memory_are_measured():
    linear = nn.Linear(8, 4)
    x = torch.randn(1, 8)
    assert count_flops(linear, x) == 2 * 8 * 4
    assert cpu_peak_bytes(linear, x) >= (4 * 8 + 4) * 4  # at least the weight gradients


class _Broken(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.w = nn.Parameter(torch.ones(8))

    def forward(self, x):
        if self.mode == "shape":
            return x[..., :4] * self.w[:4]
        if self.mode == "nan":
            return x * self.w * float("nan")
        if self.mode == "stateful":  # differs call to call whatever the RNG seed
            self.calls = getattr(self, "calls", 0) + 1
            return x * self.w * self.calls
        return x * self.w


@pytest.mark.parametrize("mode,check", [
    ("shape", "shape_contract"), ("nan", "finite_forward_backward"),
    ("stateful", "deterministic"), ("nonzero", "function_preserving"),
])
def test_each_validation_check_catches_its_failure(mode, check):
    report = validate_seed(_Broken(mode), features(), function_preserving=True)
    failed = {c.name for c in report.checks if not c.passed}
    assert not report.passed and check in failed


async def test_every_builtin_passes_and_builds_identical_bytes_twice():
    for spec in builtin_blueprints()[:6]:
        target = features() if common_pb2.SLOT_KIND_FEATURES in spec.slot_kinds else None
        if target is None:
            continue
        first = await build_kernel(spec, target, FAST, _noop)
        second = await build_kernel(spec, target, FAST, _noop)
        assert first.report.passed
        assert first.artifact == second.artifact and first.kernel_id == second.kernel_id


async def test_a_broken_promise_fails_validation_naming_the_check():
    spec = get_builtin("BP-LORA-R8")
    for node in spec.graph.nodes:
        if "init" in node.attrs:
            node.attrs["init"].CopyFrom(blueprint_pb2.AttrValue(string_value="default"))
    with pytest.raises(ValidationFailed) as err:
        await build_kernel(spec, features(), FAST, _noop)
    assert err.value.check == "function_preserving"


async def test_stages_are_reported_in_order():
    seen = []

    async def record(stage, detail):
        seen.append(stage)

    await build_kernel(get_builtin("BP-IA3"), features(), FAST, record)
    assert seen == ["BUILDING", "VALIDATING", "CHARACTERISING"]
    assert asyncio.get_running_loop()  # ran on the test's loop, torch work off it


async def test_concurrent_builds_run_their_torch_steps_one_at_a_time(monkeypatch):
    # torch.export patches nn.Module.__call__ process-wide while it traces; two traces
    # interleaved on two threads once left the patch in place, and every later
    # torch.compile in the process failed. The torch steps of all workers share one thread.
    import threading

    from esper.tezzeret import pipeline

    running, most = 0, 0
    lock = threading.Lock()
    real_check = pipeline.check

    def counted_check(*args):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            return real_check(*args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(pipeline, "check", counted_check)
    original_call = nn.Module.__call__
    exporting = PipelineSettings(latency_samples=3, warmup_runs=0, try_export=True)
    specs = [get_builtin(ref) for ref in ("BP-MLP-GELU", "BP-IA3", "BP-LORA-R8", "BP-MLP-GELU")]
    built = await asyncio.gather(*(build_kernel(s, features(8 + 8 * i), exporting, _noop)
                                   for i, s in enumerate(specs)))
    assert most == 1
    assert nn.Module.__call__ is original_call
    assert all(b.report.passed for b in built)
