"""The compile pipeline for one target: build -> validate -> optimise -> characterise ->
serialise -> store -> register.

The torch steps are plain functions run on one dedicated thread; `compile_target` strings
them together, reporting each stage through a callback (the worker records it in the job
and on Oona). Everything is deterministic: the initial weights come from a seed derived
from the blueprint and the target, so every worker produces the same bytes and therefore
the same content-addressed key and kernel id — a redelivered job registers nothing new.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from esper.blueprints import build_seed, estimate_params
from esper.blueprints.artifact import kernel_id_for, pack_kernel, sha256_hex
from esper.kasmina.widen import WidenStandIn, widen_request
from esper.leyline.v1 import blueprint_pb2, common_pb2, kernel_pb2
from esper.tezzeret import jobs
from esper.tezzeret.characterise import characterise
from esper.tezzeret.errors import ValidationFailed
from esper.tezzeret.optimise import optimise
from esper.tezzeret.tensors import DTYPES
from esper.tezzeret.validate import first_failure, validate_seed

# Bits of the SHA-256 of (blueprint, target) used as the init seed: fits torch's seed range.
INIT_SEED_BITS = 63


@dataclass(frozen=True)
class PipelineSettings:
    latency_samples: int = 50
    warmup_runs: int = 3
    try_export: bool = True
    try_compile: bool = False


@dataclass(frozen=True)
class BuiltKernel:
    """The torch side's result for one target."""

    artifact: bytes
    sha256: str
    kernel_id: str
    target: kernel_pb2.KernelTarget
    report: kernel_pb2.ValidationReport
    stats: kernel_pb2.KernelStats


def torch_version() -> str:
    """"2.13.0" for "2.13.0+cpu": the local build tag does not change kernels."""
    return torch.__version__.split("+")[0]


def resolved_target(target: kernel_pb2.KernelTarget) -> kernel_pb2.KernelTarget:
    out = kernel_pb2.KernelTarget()
    out.CopyFrom(target)
    out.torch_version = torch_version()
    return out


def describe_target(target: kernel_pb2.KernelTarget) -> str:
    """"cpu/float32 FEATURES C=16" for logs and job details."""
    dtype = common_pb2.Dtype.Name(target.dtype).removeprefix("DTYPE_").lower()
    kind = common_pb2.SlotKind.Name(target.shape.kind).removeprefix("SLOT_KIND_")
    return f"{target.device}/{dtype} {kind} C={target.shape.channels}"


def init_seed(spec: blueprint_pb2.BlueprintSpec, target: kernel_pb2.KernelTarget) -> int:
    digest = hashlib.sha256(spec.SerializeToString(deterministic=True)
                            + target.shape.SerializeToString(deterministic=True)
                            + bytes([target.dtype])).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - INIT_SEED_BITS)


# ---- the torch steps (run on TORCH_THREAD) ----------------------------------------------

# One thread for every worker in the process: torch.export and torch.fx patch process-wide
# state (nn.Module.__call__) while they trace, and two traces interleaved on two threads can
# leave the patch in place for good, breaking every later trace and torch.compile.
TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tezzeret-torch")


def build(spec, target) -> tuple[nn.Module, bytes]:
    """The seed module and its artifact bytes, packed before any forward touches buffers.
    A width kernel holds no weights (Kasmina makes them from the host's layers): what is
    validated and measured is its widening of a stand-in layer pair (WidenStandIn)."""
    module = build_seed(spec, target.shape, device=target.device, dtype=DTYPES[target.dtype],
                        seed=init_seed(spec, target))
    artifact = pack_kernel(spec, target.shape, module, target=target)
    if widen_request(module):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(spec, target))
            module = WidenStandIn(module, target.shape.channels,
                                  conv=target.shape.kind == common_pb2.SLOT_KIND_CONV2D)
        module = module.to(device=target.device, dtype=DTYPES[target.dtype])
    return module, artifact


def check(module: nn.Module, spec, target, settings: PipelineSettings
          ) -> kernel_pb2.ValidationReport:
    """Validation checks, then optimisation trials; ValidationFailed names the first
    failing check."""
    report = validate_seed(module, target, function_preserving=spec.metadata.function_preserving)
    failed = first_failure(report)
    if failed is not None:
        raise ValidationFailed(failed.name, failed.detail, report)
    outcome = optimise(module, target, try_export=settings.try_export,
                       try_compile=settings.try_compile)
    report.optimisations.extend(outcome.kept)
    report.optimisations_dropped.extend(outcome.dropped)
    return report


def measure(module: nn.Module, target, settings: PipelineSettings) -> kernel_pb2.KernelStats:
    return characterise(module, target, samples=settings.latency_samples,
                        warmup=settings.warmup_runs)


# ---- the async driver --------------------------------------------------------------------

StageCallback = Callable[[str, str], Awaitable[None]]


async def build_kernel(spec: blueprint_pb2.BlueprintSpec, target: kernel_pb2.KernelTarget,
                       settings: PipelineSettings, on_stage: StageCallback) -> BuiltKernel:
    """Build, validate, optimise and characterise one target (torch work off the loop)."""
    loop = asyncio.get_running_loop()
    target = resolved_target(target)
    where = describe_target(target)
    await on_stage(jobs.BUILDING, f"building for {where}")
    module, artifact = await loop.run_in_executor(TORCH_THREAD, build, spec, target)
    await on_stage(jobs.VALIDATING, f"validating for {where}")
    report = await loop.run_in_executor(TORCH_THREAD, check, module, spec, target, settings)
    await on_stage(jobs.CHARACTERISING, f"characterising for {where}")
    stats = await loop.run_in_executor(TORCH_THREAD, measure, module, target, settings)
    if isinstance(module, WidenStandIn):  # its real size is the slot's, not the stand-in's
        stats.params = estimate_params(spec, target.shape.channels,
                                       target.shape.widen_params_per_unit)
    digest = sha256_hex(artifact)
    return BuiltKernel(artifact, digest, kernel_id_for(digest), target, report, stats)


def kernel_record(ref: str, built: BuiltKernel, uri: str = "") -> kernel_pb2.KernelArtifact:
    """What Tezzeret hands Urza with a kernel's bytes (Urza sets the uri when empty)."""
    return kernel_pb2.KernelArtifact(
        kernel_id=built.kernel_id, blueprint_ref=ref, target=built.target,
        format=kernel_pb2.KERNEL_FORMAT_SAFETENSORS, uri=uri, sha256=built.sha256,
        size_bytes=len(built.artifact), stats=built.stats, validation=built.report,
        state=kernel_pb2.KERNEL_STATE_VALID,
    )
