"""Blueprints: declarative seed recipes turned into torch modules and kernel artifacts.

Shared by Kasmina (builds seeds), Tezzeret (compiles and characterises kernels) and Urza
(validates and serves the catalogue). A seed module computes a *delta* that Kasmina adds to
the host activation: ``output = host + alpha * seed(host)`` (see esper.blueprints.builder).
"""

from esper.blueprints.artifact import (
    kernel_id_for,
    pack_kernel,
    read_kernel_header,
    sha256_hex,
    unpack_kernel,
)
from esper.blueprints.builder import SeedModule, build_seed, example_input
from esper.blueprints.catalog import builtin_blueprints, get_builtin
from esper.blueprints.dims import eval_dim, parse_dim
from esper.blueprints.errors import BlueprintError, KernelFormatError, KernelIntegrityError
from esper.blueprints.graph import (
    REFERENCE_WIDTH,
    estimate_flops,
    estimate_params,
    resolve_for_shape,
    validate_blueprint,
    validate_slot_shape,
)
from esper.blueprints.refs import format_ref, graph_digest, parse_ref, spec_ref

__all__ = [
    "REFERENCE_WIDTH",
    "BlueprintError",
    "KernelFormatError",
    "KernelIntegrityError",
    "SeedModule",
    "build_seed",
    "builtin_blueprints",
    "estimate_flops",
    "estimate_params",
    "eval_dim",
    "example_input",
    "format_ref",
    "get_builtin",
    "graph_digest",
    "kernel_id_for",
    "pack_kernel",
    "parse_dim",
    "parse_ref",
    "read_kernel_header",
    "resolve_for_shape",
    "sha256_hex",
    "spec_ref",
    "unpack_kernel",
    "validate_blueprint",
    "validate_slot_shape",
]
