"""The built-in blueprint catalogue (version 1.0.0), seeded into Urza on first start.

Every seed computes a delta (see esper.blueprints.builder) and every built-in is
function-preserving: its output is exactly zero at initialisation. ``params_formula`` is
the exact parameter count of the built module and ``flops_formula`` the per-position FLOP
estimate of esper.blueprints.shapes, both as expressions of the slot width C (tests check
both against the builder and the estimator at several widths).
"""

from __future__ import annotations

from functools import lru_cache

from esper.blueprints.catalog_entries import ENTRIES
from esper.blueprints.errors import BlueprintError
from esper.blueprints.graph import REFERENCE_WIDTH, validate_blueprint
from esper.blueprints.refs import parse_ref
from esper.leyline.v1 import blueprint_pb2 as bp

# Bytes per activation element of the fp32 reference for memory_footprint_bytes.
FP32_BYTES = 4
# Families a policy grows from only when asked (attach(blueprints=[...]) in-process; a
# kernel compiled on purpose for Tamiyo): diagnostics add no capacity, so a benefit-per-cost
# ranking would always pick them over real growth; width growth, at the heuristic's default
# timing (a validation plateau, epochs 8-13 of 20), left the morphogenesis experiment's MLP
# worse than residual growth alone (87.61% against 87.89%, 0 of 5 seeds better): the new
# units come too late to be trained.
OPT_IN_FAMILIES = frozenset({bp.BLUEPRINT_FAMILY_DIAGNOSTIC, bp.BLUEPRINT_FAMILY_WIDTH})


def builtin_blueprints() -> list[bp.BlueprintSpec]:
    """Fresh copies of every built-in blueprint, in catalogue order."""
    return [_copy(spec) for spec in _catalogue()]


def get_builtin(ref: str) -> bp.BlueprintSpec:
    """The built-in ``name@version`` (``name`` alone means the latest); KeyError if absent."""
    if "@" in ref:
        name, version = parse_ref(ref)
    else:
        name, version = ref, None
    for spec in _catalogue():
        if spec.name == name and (version is None or spec.version == version):
            return _copy(spec)
    raise KeyError(f"no built-in blueprint {ref!r}")


def _copy(spec: bp.BlueprintSpec) -> bp.BlueprintSpec:
    out = bp.BlueprintSpec()
    out.CopyFrom(spec)
    return out


@lru_cache(maxsize=1)
def _catalogue() -> tuple[bp.BlueprintSpec, ...]:
    specs = []
    for entry in ENTRIES:
        spec = entry()
        resolved = validate_blueprint(spec)
        # Activation memory per position at the reference width: every non-pooled
        # intermediate tensor kept for backward, in fp32.
        spec.metadata.memory_footprint_bytes = FP32_BYTES * sum(
            n.out.channels for n in resolved.nodes if not n.out.pooled)
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise BlueprintError("name", "duplicate built-in blueprint name")
    assert REFERENCE_WIDTH == 256  # the metadata docs state C = 256
    return tuple(specs)
