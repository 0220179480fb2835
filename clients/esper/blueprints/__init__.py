"""Blueprints: declarative seed recipes turned into torch modules and kernel artifacts.

Shared by Kasmina (builds seeds), Tezzeret (compiles and characterises kernels) and Urza
(validates and serves the catalogue). A seed module computes a *delta* that Kasmina adds to
the host activation: ``output = host + alpha * seed(host)`` (see esper.blueprints.builder).
"""

import importlib

# Names are imported on first use (PEP 562), so code that only validates specs (Urza, the
# CLI) does not pay for importing torch, which the builder and the artifact format need.
_EXPORTS = {
    "esper.blueprints.artifact": (
        "kernel_id_for", "pack_kernel", "read_kernel_header", "sha256_hex", "unpack_kernel",
    ),
    "esper.blueprints.builder": ("SeedModule", "build_seed", "example_input"),
    "esper.blueprints.catalog": ("builtin_blueprints", "get_builtin"),
    "esper.blueprints.dims": ("eval_dim", "parse_dim"),
    "esper.blueprints.errors": ("BlueprintError", "KernelFormatError", "KernelIntegrityError"),
    "esper.blueprints.graph": (
        "REFERENCE_WIDTH", "estimate_flops", "estimate_params", "resolve_for_shape",
        "validate_blueprint", "validate_slot_shape",
    ),
    "esper.blueprints.refs": ("format_ref", "graph_digest", "parse_ref", "spec_ref"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'esper.blueprints' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
