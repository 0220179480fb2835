"""Contract version negotiation rules."""

from esper.leyline.v1.common_pb2 import SemanticVersion
from esper.leyline.version import CONTRACT_MAJOR, compatibility_error, contract_version


def test_same_major_is_compatible_whatever_the_minor():
    assert compatibility_error(contract_version()) is None
    assert compatibility_error(SemanticVersion(major=CONTRACT_MAJOR, minor=9, patch=3)) is None


def test_other_major_is_refused_with_what_is_supported():
    message = compatibility_error(SemanticVersion(major=CONTRACT_MAJOR + 1))
    assert message is not None
    assert f"{CONTRACT_MAJOR + 1}.0.0" in message and f"{CONTRACT_MAJOR}.x" in message
    assert compatibility_error(SemanticVersion()) is not None  # a peer that sent no version
