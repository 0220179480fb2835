"""Validation checks of a freshly built seed module against its target.

Each check returns a ValidationCheck with a stable name; a check that raises is a failed
check whose detail is the error. The checks:

* ``shape_contract``: the output has the slot's shape, dtype and device;
* ``finite_forward_backward``: forward and backward produce only finite values, and a
  gradient reaches the parameters (when there are any): the seed can train;
* ``function_preserving``: where the metadata promises it, the output is zero at init;
* ``deterministic``: two forwards with the same input and RNG seed are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from esper.leyline.v1 import kernel_pb2
from esper.tezzeret.tensors import VALIDATION_BATCH, activation_shape, example_input

SHAPE_CONTRACT = "shape_contract"
FINITE_FORWARD_BACKWARD = "finite_forward_backward"
FUNCTION_PRESERVING = "function_preserving"
DETERMINISTIC = "deterministic"
CHECK_ORDER = (SHAPE_CONTRACT, FINITE_FORWARD_BACKWARD, FUNCTION_PRESERVING, DETERMINISTIC)

# Seed of the validation inputs and of the RNG around the determinism forwards.
VALIDATION_SEED = 20_240_601
# Largest |output| still called "zero" at init: exact zeros are expected (zero-initialised
# projections and gates), this only forgives denormal noise.
FUNCTION_PRESERVING_ATOL = 1e-12


def _check(name: str, run: Callable[[], tuple[bool, str]]) -> kernel_pb2.ValidationCheck:
    try:
        passed, detail = run()
    except Exception as exc:  # a module that raises fails the check, it never kills the worker
        passed, detail = False, f"raised {type(exc).__name__}: {exc}"
    return kernel_pb2.ValidationCheck(name=name, passed=passed, detail=detail[:1000])


def _forward(module: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return module(x)


def check_shape_contract(module: nn.Module, x: torch.Tensor, target) -> tuple[bool, str]:
    with torch.no_grad():
        out = _forward(module, x, VALIDATION_SEED)
    want = activation_shape(target.shape, VALIDATION_BATCH)
    if tuple(out.shape) != want:
        return False, f"output shape {tuple(out.shape)} != slot shape {want}"
    if out.dtype != x.dtype or out.device != x.device:
        return False, f"output {out.dtype} on {out.device} != input {x.dtype} on {x.device}"
    return True, f"output {tuple(out.shape)} {out.dtype} matches the slot"


def check_finite(module: nn.Module, x: torch.Tensor) -> tuple[bool, str]:
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = _forward(module, x, VALIDATION_SEED)
    if not torch.isfinite(out).all():
        return False, "forward produced NaN/Inf"
    # A fixed random upstream gradient: a plain sum would cancel in normalised outputs.
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    (out * upstream.to(out)).sum().backward()
    if x.grad is None or not torch.isfinite(x.grad).all():
        return False, "backward produced a missing or non-finite input gradient"
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]
    if any(not torch.isfinite(g).all() for g in grads):
        return False, "backward produced NaN/Inf parameter gradients"
    if params and not any(bool(g.abs().sum() > 0) for g in grads):
        return False, f"no gradient reaches any of the {len(params)} trainable parameters"
    module.zero_grad(set_to_none=True)
    return True, f"finite forward/backward; gradients reach {len(grads)}/{len(params)} parameters"


def check_function_preserving(module: nn.Module, x: torch.Tensor, promised: bool
                              ) -> tuple[bool, str]:
    with torch.no_grad():
        out = _forward(module, x, VALIDATION_SEED)
    peak = float(out.abs().max()) if out.numel() else 0.0
    if not promised:
        return True, f"not promised by the blueprint's metadata (max |output| at init = {peak:.3g})"
    if peak > FUNCTION_PRESERVING_ATOL:
        return False, f"metadata promises a zero output at init, got max |output| = {peak:.6g}"
    return True, "output is zero at initialisation"


def check_deterministic(module: nn.Module, x: torch.Tensor) -> tuple[bool, str]:
    with torch.no_grad():
        first = _forward(module, x, VALIDATION_SEED)
        second = _forward(module, x, VALIDATION_SEED)
    if not torch.equal(first, second):
        diff = float((first - second).abs().max())
        return False, f"two forwards with the same input and seed differ by up to {diff:.3g}"
    return True, "two forwards with the same input and seed are identical"


def validate_seed(module: nn.Module, target: kernel_pb2.KernelTarget, *,
                  function_preserving: bool) -> kernel_pb2.ValidationReport:
    """Run every check on `module` (in training mode, as Kasmina runs it)."""
    module.train()
    x = example_input(target, VALIDATION_BATCH, VALIDATION_SEED)
    checks = [
        _check(SHAPE_CONTRACT, lambda: check_shape_contract(module, x, target)),
        _check(FINITE_FORWARD_BACKWARD, lambda: check_finite(module, x)),
        _check(FUNCTION_PRESERVING, lambda: check_function_preserving(module, x, function_preserving)),
        _check(DETERMINISTIC, lambda: check_deterministic(module, x)),
    ]
    return kernel_pb2.ValidationReport(passed=all(c.passed for c in checks), checks=checks)


def first_failure(report: kernel_pb2.ValidationReport) -> kernel_pb2.ValidationCheck | None:
    return next((c for c in report.checks if not c.passed), None)
