"""The policy core: pure decision logic over Leyline messages, protobuf only. The heuristic
policy, the context a policy decides from, the budget and safety rules every decision must
pass, and how decisions are built. Tamiyo serves it; Tolaria runs it in process as its
local policy. Tamiyo's learned policy (`esper.tamiyo.policies`) builds on it.
"""

from esper.policy.base import Policy
from esper.policy.candidates import (
    CandidateProvider,
    NoCandidateProvider,
    StaticCandidateProvider,
)
from esper.policy.context import PolicyContext, RunHistory
from esper.policy.heuristic import HeuristicConfig, HeuristicPolicy

__all__ = [
    "CandidateProvider",
    "HeuristicConfig",
    "HeuristicPolicy",
    "NoCandidateProvider",
    "Policy",
    "PolicyContext",
    "RunHistory",
    "StaticCandidateProvider",
]
