"""Tamiyo: the strategic controller. It turns training snapshots into AdaptationDecisions.

The heuristic policy is the policy core, `esper.policy` (pure logic, run in process by
Tolaria too); `esper.tamiyo.policies` holds the learned policy; the gRPC server lives
beside them and is only imported when serving.
"""
