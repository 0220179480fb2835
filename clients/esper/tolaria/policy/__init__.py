"""Policy sources for a training session: in-process (LocalPolicy) or a remote Tamiyo
session (RemotePolicy)."""

from esper.tolaria.policy.base import PolicySource
from esper.tolaria.policy.local import LOCAL_HEURISTIC, LocalPolicy

__all__ = ["LOCAL_HEURISTIC", "LocalPolicy", "PolicySource"]
