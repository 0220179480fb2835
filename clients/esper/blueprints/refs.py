"""Blueprint references ``name@semver``, e.g. ``BP-MLP-GELU@1.0.0``."""

from __future__ import annotations

import hashlib
import re

from esper.blueprints.errors import BlueprintError

# Upper-case letters, digits and dashes, starting with a letter (as documented in the proto).
NAME_RE = re.compile(r"^[A-Z][A-Z0-9-]*$")
# Longest blueprint name: keeps keys, logs and metric labels readable.
MAX_NAME_LENGTH = 64
# semver.org 2.0.0 core version with optional pre-release and build metadata.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# Longest version string accepted.
MAX_VERSION_LENGTH = 64


def check_name(name: str, field: str = "name") -> None:
    if not name:
        raise BlueprintError(field, "is required")
    if len(name) > MAX_NAME_LENGTH:
        raise BlueprintError(field, f"longer than {MAX_NAME_LENGTH} characters")
    if not NAME_RE.match(name):
        raise BlueprintError(field, f"{name!r} must match {NAME_RE.pattern}")


def check_version(version: str, field: str = "version") -> None:
    if not version:
        raise BlueprintError(field, "is required")
    if len(version) > MAX_VERSION_LENGTH or not SEMVER_RE.match(version):
        raise BlueprintError(field, f"{version[:MAX_VERSION_LENGTH]!r} is not a semantic "
                             "version MAJOR.MINOR.PATCH")


def parse_ref(ref: str) -> tuple[str, str]:
    """``"BP-MLP-GELU@1.0.0"`` -> ``("BP-MLP-GELU", "1.0.0")``; BlueprintError if malformed."""
    if not isinstance(ref, str) or ref.count("@") != 1:
        raise BlueprintError("ref", f"{str(ref)[:80]!r} is not of the form name@MAJOR.MINOR.PATCH")
    name, version = ref.split("@")
    check_name(name, "ref.name")
    check_version(version, "ref.version")
    return name, version


def format_ref(name: str, version: str) -> str:
    """``("BP-MLP-GELU", "1.0.0")`` -> ``"BP-MLP-GELU@1.0.0"``, validating both parts."""
    check_name(name)
    check_version(version)
    return f"{name}@{version}"


def spec_ref(spec) -> str:
    """The ``name@version`` reference of a BlueprintSpec."""
    return format_ref(spec.name, spec.version)


def graph_digest(spec) -> str:
    """SHA-256 hex of the canonical (deterministic) serialisation of ``spec.graph``: the
    ``BlueprintRecord.graph_digest`` Urza stores to refuse a re-used version with a new graph."""
    return hashlib.sha256(spec.graph.SerializeToString(deterministic=True)).hexdigest()
