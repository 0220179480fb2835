"""The Leyline contract version, negotiated when a session opens.

The version is defined once, in the contract itself: the highest value of the
ContractVersion enum (common.proto), numbered major * 10000 + minor * 100 + patch, so a
client in any language reads it from its generated code."""

from __future__ import annotations

from esper.leyline.v1.common_pb2 import ContractVersion, SemanticVersion

# How ContractVersion values encode a version (see common.proto).
_MAJOR_UNIT = 10_000
_MINOR_UNIT = 100


def decode_contract_version(value: int) -> SemanticVersion:
    """CONTRACT_VERSION_1_1_0 (10100) -> SemanticVersion 1.1.0."""
    return SemanticVersion(major=value // _MAJOR_UNIT, minor=value // _MINOR_UNIT % _MINOR_UNIT,
                           patch=value % _MINOR_UNIT)


_CURRENT = decode_contract_version(max(ContractVersion.values()))
CONTRACT_MAJOR = _CURRENT.major
CONTRACT_MINOR = _CURRENT.minor
CONTRACT_PATCH = _CURRENT.patch


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
