"""Tamiyo's policies: pure decision logic over Leyline messages, no server dependencies.

The heuristic policy is light (protobuf only) and is what Tolaria imports in-process as its
local policy. The learned policy lives in `esper.tamiyo.policies.gnn` and pulls in
torch-geometric; import it explicitly.
"""

from esper.tamiyo.policies.base import Policy
from esper.tamiyo.policies.candidates import (
    CandidateProvider,
    NoCandidateProvider,
    StaticCandidateProvider,
)
from esper.tamiyo.policies.context import PolicyContext, RunHistory
from esper.tamiyo.policies.heuristic import HeuristicConfig, HeuristicPolicy

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
