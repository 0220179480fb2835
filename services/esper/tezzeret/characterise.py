"""Measuring a kernel on its target: parameters, FLOPs, latency p50/p99 and peak memory.

* params: trainable parameters of the module;
* FLOPs: counted by torch.utils.flop_counter.FlopCounterMode over one forward of a batch
  of one (matmul/conv-style ops; element-wise ops are not counted by torch);
* latency: `samples` timed forwards (after `warmup` untimed ones), batch of one, no grad;
* peak memory: on CUDA the allocator's peak during a forward+backward over the baseline;
  on CPU (torch's CPU allocator keeps no statistics, and tracemalloc does not see it) the
  bytes alive at the end of the forward that backward needs: the tensors autograd saved,
  the output, plus the parameter gradients backward writes.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.leyline.v1 import kernel_pb2
from esper.tezzeret.tensors import MEASURE_BATCH, example_input

# Seed of the measurement inputs.
MEASURE_SEED = 7
# p99 needs this many samples to be more than the maximum; below it p99 is the maximum.
P99_MIN_SAMPLES = 100


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(module: nn.Module, x: torch.Tensor, samples: int, warmup: int) -> list[float]:
    """Forward latencies in milliseconds."""
    times: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            module(x)
        _sync(x.device)
        for _ in range(samples):
            start = time.perf_counter_ns()
            module(x)
            _sync(x.device)
            times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; the max below P99_MIN_SAMPLES for q=.99."""
    if len(values) == 1:
        return values[0]
    if q >= 0.99 and len(values) < P99_MIN_SAMPLES:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def cpu_peak_bytes(module: nn.Module, x: torch.Tensor) -> int:
    # In a host model the slot activation requires grad; so must ours, or a seed without
    # parameters would have nothing to differentiate.
    x = x.detach().requires_grad_(True)
    saved: dict[int, int] = {}
    # Inputs and weights exist anyway; only what the forward creates is extra memory.
    existing = {x.data_ptr(), *(p.data_ptr() for p in module.parameters())}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in existing:
            saved[t.data_ptr()] = max(saved.get(t.data_ptr(), 0), _tensor_bytes(t))
        return t

    module.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    alive = sum(saved.values()) + _tensor_bytes(out)
    out.float().sum().backward()
    grads = sum(_tensor_bytes(p.grad) for p in module.parameters() if p.grad is not None)
    module.zero_grad(set_to_none=True)
    return alive + grads


def cuda_peak_bytes(module: nn.Module, x: torch.Tensor) -> int:
    torch.cuda.synchronize(x.device)
    baseline = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    module.zero_grad(set_to_none=True)
    module(x.detach().requires_grad_(True)).float().sum().backward()
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device) - baseline
    module.zero_grad(set_to_none=True)
    return max(0, peak)


def characterise(module: nn.Module, target: kernel_pb2.KernelTarget, *, samples: int,
                 warmup: int) -> kernel_pb2.KernelStats:
    """Measure `module` on `target` (modes as Kasmina runs seeds: training mode)."""
    module.train()
    x = example_input(target, MEASURE_BATCH, MEASURE_SEED)
    times = time_forward(module, x, samples, warmup)
    peak = cuda_peak_bytes(module, x) if x.device.type == "cuda" else cpu_peak_bytes(module, x)
    return kernel_pb2.KernelStats(
        params=count_params(module),
        flops=count_flops(module, x),
        latency_p50_ms=statistics.median(times),
        latency_p99_ms=percentile(times, 0.99),
        peak_memory_bytes=peak,
        latency_samples=len(times),
    )
