"""Urza's own Prometheus metrics, on the runtime's registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter

KERNEL_BYTES_SERVED = Counter(
    "esper_urza_kernel_bytes_served_total", "Kernel bytes streamed by DownloadKernel",
    registry=REGISTRY)
KERNEL_BYTES_UPLOADED = Counter(
    "esper_urza_kernel_bytes_uploaded_total", "Kernel bytes received, verified and stored by UploadKernel",
    registry=REGISTRY)
KERNELS_INVALIDATED = Counter(
    "esper_urza_kernels_invalidated_total",
    "Kernels marked INVALID because their stored bytes did not match the digest",
    registry=REGISTRY)
DEPENDENCY_UNAVAILABLE = Counter(
    "esper_urza_dependency_unavailable_total",
    "RPCs answered UNAVAILABLE because PostgreSQL or the object store was unreachable",
    ["rpc"], registry=REGISTRY)
