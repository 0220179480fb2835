"""Optimisation trials: torch.export (and, when enabled, torch.compile) of a seed module.

An optimisation is *kept* only when it matches eager outputs, still trains (gradients
reach the parameters through it) and is faster than eager on the target; otherwise it is
*dropped* with the reason. Both lists go into the ValidationReport. The artifact itself is
always the safetensors weights + graph (Kasmina rebuilds the module with the shared
builder), so a kept optimisation is a verified fast path a loader may apply, never
something unpickled.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from esper.leyline.v1 import kernel_pb2
from esper.tezzeret.characterise import MEASURE_SEED, time_forward
from esper.tezzeret.tensors import VALIDATION_BATCH, example_input

TORCH_EXPORT = "torch.export"
TORCH_COMPILE = "torch.compile"
# Tolerances for "matches eager": fp32 reorderings of the same maths stay far inside these.
MATCH_RTOL = 1e-4
MATCH_ATOL = 1e-5
# Timed forwards per variant when comparing speed: enough for a stable median, cheap.
SPEED_SAMPLES = 20
SPEED_WARMUP = 3


@dataclass
class Outcome:
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _export(module: nn.Module, x: torch.Tensor) -> nn.Module:
    return torch.export.export(copy.deepcopy(module), (x,)).module()


def _compile(module: nn.Module, x: torch.Tensor) -> nn.Module:
    compiled = torch.compile(copy.deepcopy(module), dynamic=False)
    compiled(x)  # compile now, so a toolchain failure is caught here
    return compiled


def _seeded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A forward under a fixed RNG seed, so dropout draws the same mask in both variants."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MEASURE_SEED)
        return module(x)


def _trains(variant: nn.Module, x: torch.Tensor) -> str:
    """"" when gradients flow finitely to the variant's parameters, else why not."""
    params = [p for p in variant.parameters() if p.requires_grad]
    out = variant(x.detach().clone().requires_grad_(True))
    out.float().square().sum().backward()
    grads = [p.grad for p in params if p.grad is not None]
    if any(not torch.isfinite(g).all() for g in grads):
        return "non-finite gradients"
    if params and not grads:
        return "no gradient reaches the parameters"
    return ""


def _trial(name: str, make: Callable[[nn.Module, torch.Tensor], nn.Module],
           module: nn.Module, target: kernel_pb2.KernelTarget, outcome: Outcome) -> None:
    # One input for everything: exported programs are specialised to the example's shape.
    x = example_input(target, VALIDATION_BATCH, MEASURE_SEED)
    try:
        variant = make(module, x)
        with torch.no_grad():
            same = torch.allclose(_seeded(variant, x), _seeded(module, x),
                                  rtol=MATCH_RTOL, atol=MATCH_ATOL)
        if not same:
            outcome.dropped.append(f"{name}: outputs differ from eager")
            return
        why = _trains(variant, x)
        if why:
            outcome.dropped.append(f"{name}: does not train ({why})")
            return
        eager = statistics.median(time_forward(module, x, SPEED_SAMPLES, SPEED_WARMUP))
        fast = statistics.median(time_forward(variant, x, SPEED_SAMPLES, SPEED_WARMUP))
    except Exception as exc:  # any failure of the optimiser only drops the optimisation
        outcome.dropped.append(f"{name}: failed: {type(exc).__name__}: {str(exc)[:200]}")
        return
    if fast < eager:
        outcome.kept.append(f"{name} (p50 {fast:.3f} ms vs eager {eager:.3f} ms)")
    else:
        outcome.dropped.append(f"{name}: no speed-up (p50 {fast:.3f} ms vs eager {eager:.3f} ms)")


def optimise(module: nn.Module, target: kernel_pb2.KernelTarget, *, try_export: bool,
             try_compile: bool) -> Outcome:
    """Try the enabled optimisations on copies of `module`; the module is left as it is."""
    outcome = Outcome()
    module.train()
    if try_export:
        _trial(TORCH_EXPORT, _export, module, target, outcome)
    if try_compile:
        _trial(TORCH_COMPILE, _compile, module, target, outcome)
    return outcome
