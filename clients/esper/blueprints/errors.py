"""Errors of the blueprint package, each naming what was wrong and where."""

from __future__ import annotations


class BlueprintError(ValueError):
    """A blueprint (or slot shape) is invalid. ``field_path`` names the offending field in
    proto terms, e.g. ``graph.nodes[3].attrs.out_features``, so a gRPC server can answer
    INVALID_ARGUMENT naming the op and attribute."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


class KernelFormatError(ValueError):
    """Kernel bytes are not a well-formed KERNEL_FORMAT_SAFETENSORS artifact."""


class KernelIntegrityError(KernelFormatError):
    """Kernel bytes do not match their expected SHA-256 digest."""
