"""Turning a germinate action into a seed module: blueprint lookup, kernel bytes from
the KernelCache (verified, never blocking), and the shared blueprint builder."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from esper.kasmina.cache import KernelCache, KernelDigestMismatch, KernelFetchError
from esper.leyline.v1.blueprint_pb2 import BlueprintSpec
from esper.leyline.v1.common_pb2 import SlotShape
from esper.leyline.v1.control_pb2 import GerminateAction


class SeedBuildError(ValueError):
    """The seed for a germination cannot be built; the message says why."""


SeedBuilder = Callable[[GerminateAction, SlotShape, torch.device, torch.dtype], nn.Module]


class BlueprintSeedBuilder:
    """Builds seeds from a blueprint catalogue (ref -> BlueprintSpec) and, when the action
    names a kernel, from verified kernel bytes in a KernelCache."""

    def __init__(self, catalog: Mapping[str, BlueprintSpec] | None = None,
                 cache: KernelCache | None = None) -> None:
        if catalog is None:
            from esper.blueprints.catalog import builtin_blueprints

            catalog = {f"{s.name}@{s.version}": s for s in builtin_blueprints()}
        self.catalog = dict(catalog)
        self.cache = cache

    def spec(self, ref: str) -> BlueprintSpec:
        if ref not in self.catalog:
            raise SeedBuildError(f"unknown blueprint {ref!r}")
        return self.catalog[ref]

    def is_function_preserving(self, ref: str) -> bool:
        return ref in self.catalog and self.catalog[ref].metadata.function_preserving

    def __call__(self, action: GerminateAction, shape: SlotShape, device: torch.device,
                 dtype: torch.dtype) -> nn.Module:
        spec = self.spec(action.blueprint_ref)
        if shape.kind not in spec.slot_kinds:
            raise SeedBuildError(f"blueprint {action.blueprint_ref} does not support slot kind "
                                 f"{shape.kind}")
        data = self._kernel_bytes(action) if action.kernel_id else None
        try:
            if data is not None:
                return _from_kernel(spec, shape, data, action.kernel_sha256, device, dtype)
            from esper.blueprints.builder import build_seed

            return build_seed(spec, shape, device=device, dtype=dtype)
        except SeedBuildError:
            raise
        except Exception as exc:  # BlueprintError, KernelFormatError, torch errors
            raise SeedBuildError(f"blueprint {action.blueprint_ref}: {exc}") from exc

    def _kernel_bytes(self, action: GerminateAction) -> bytes:
        if self.cache is None:
            raise SeedBuildError(f"kernel {action.kernel_id}: no kernel cache configured")
        if not action.kernel_sha256:
            raise SeedBuildError(f"kernel {action.kernel_id}: kernel_sha256 is required")
        try:
            data = self.cache.get_ready(action.kernel_id, action.kernel_sha256)
        except (KernelDigestMismatch, KernelFetchError) as exc:
            raise SeedBuildError(str(exc)) from exc
        if data is None:
            self.cache.prefetch(action.kernel_id, action.kernel_sha256)
            raise SeedBuildError(f"kernel {action.kernel_id} is not ready yet (prefetch "
                                 "started; resend the decision later)")
        return data


def _from_kernel(spec, shape, data, sha256, device, dtype) -> nn.Module:
    """Rebuild the seed from kernel bytes; the artifact loader verifies the digest again
    and never unpickles. The kernel must be for this blueprint and this slot's shape."""
    from esper.blueprints.artifact import unpack_kernel
    from esper.blueprints.graph import mixes_positions

    k_spec, k_shape, module = unpack_kernel(data, sha256.lower(), device=device)
    ref, k_ref = f"{spec.name}@{spec.version}", f"{k_spec.name}@{k_spec.version}"
    if k_ref != ref:
        raise SeedBuildError(f"kernel is for blueprint {k_ref}, decision names {ref}")
    if (k_shape.kind, k_shape.channels) != (shape.kind, shape.channels):
        raise SeedBuildError(f"kernel built for slot kind {k_shape.kind} with "
                             f"{k_shape.channels} channels; slot is kind {shape.kind} with "
                             f"{shape.channels}")
    if shape.causal and not k_shape.causal and mixes_positions(k_spec):
        module = _made_causal(k_spec, k_shape, module, device)
    return module.to(dtype=dtype)


def _made_causal(spec, k_shape, module: nn.Module, device) -> nn.Module:
    """A kernel built for a slot that may look ahead, rebuilt for a causal slot with the
    kernel's own weights (causality changes no parameter, only which positions attention
    reads): otherwise the seed would read the tokens the host is trained to predict."""
    from esper.blueprints.builder import build_seed

    causal = SlotShape()
    causal.CopyFrom(k_shape)
    causal.causal = True
    rebuilt = build_seed(spec, causal, device=device, seed=0)  # weights replaced below
    rebuilt.load_state_dict(module.state_dict())
    return rebuilt
