"""Example activations for a target: the slot's layout at a given batch size, from a
private, seeded RNG so every worker builds the same inputs."""

from __future__ import annotations

import torch

from esper.leyline.v1 import common_pb2, kernel_pb2

DTYPES: dict[int, torch.dtype] = {
    common_pb2.DTYPE_FLOAT32: torch.float32,
    common_pb2.DTYPE_FLOAT16: torch.float16,
    common_pb2.DTYPE_BFLOAT16: torch.bfloat16,
    common_pb2.DTYPE_FLOAT64: torch.float64,
}
# Batch size of the validation inputs: 2, so per-sample ops cannot hide batch mixing.
VALIDATION_BATCH = 2
# Batch size of the characterisation runs: KernelStats figures are per batch of one.
MEASURE_BATCH = 1


def activation_shape(shape: common_pb2.SlotShape, batch: int) -> tuple[int, ...]:
    """The tensor shape a slot of `shape` sees at `batch`."""
    c = shape.channels
    if shape.kind == common_pb2.SLOT_KIND_FEATURES:
        return (batch, c)
    if shape.kind == common_pb2.SLOT_KIND_SEQUENCE:
        return (batch, shape.length, c)
    if shape.kind == common_pb2.SLOT_KIND_CONV1D:
        return (batch, c, shape.length)
    if shape.kind == common_pb2.SLOT_KIND_CONV2D:
        return (batch, c, shape.height, shape.width)
    raise ValueError(f"shape.kind: {shape.kind} is not a slot kind")


def device_of(target: kernel_pb2.KernelTarget) -> torch.device:
    return torch.device(target.device)


def example_input(target: kernel_pb2.KernelTarget, batch: int, seed: int) -> torch.Tensor:
    """Standard-normal activations of the target's shape (drawn on CPU, then moved)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(activation_shape(target.shape, batch), generator=generator)
    return x.to(device=device_of(target), dtype=DTYPES[target.dtype])
