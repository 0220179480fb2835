"""The Leyline contract version, negotiated when a session opens."""

from __future__ import annotations

from esper.leyline.v1.common_pb2 import SemanticVersion

CONTRACT_MAJOR = 1
CONTRACT_MINOR = 0
CONTRACT_PATCH = 0


def contract_version() -> SemanticVersion:
    """The version of the contract this code speaks."""
    return SemanticVersion(major=CONTRACT_MAJOR, minor=CONTRACT_MINOR, patch=CONTRACT_PATCH)


def format_version(v: SemanticVersion) -> str:
    return f"{v.major}.{v.minor}.{v.patch}"


def compatibility_error(peer: SemanticVersion) -> str | None:
    """None when a peer speaking `peer` is compatible; otherwise a message saying why not
    and what is supported (same major version required; 0.0.0 means the peer sent none)."""
    if peer.major == CONTRACT_MAJOR:
        return None
    return (
        f"contract version {format_version(peer)} is not supported: this server speaks "
        f"Leyline {format_version(contract_version())} and accepts major version "
        f"{CONTRACT_MAJOR}.x"
    )
