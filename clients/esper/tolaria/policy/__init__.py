"""Policy sources for a training session: in-process (LocalPolicy) or a remote Tamiyo
session (RemotePolicy)."""

from esper.tolaria.policy.base import PolicySource
from esper.tolaria.policy.local import LOCAL_HEURISTIC, HeuristicConfig, LocalPolicy
from esper.tolaria.policy.remote import RemotePolicy
from esper.tolaria.policy.replay import ReplayPolicy

__all__ = ["LOCAL_HEURISTIC", "HeuristicConfig", "LocalPolicy", "PolicySource", "RemotePolicy",
           "ReplayPolicy"]
