"""Tamiyo: the strategic controller. It turns training snapshots into AdaptationDecisions.

`esper.tamiyo.policies` holds the policies (pure logic, importable in-process by Tolaria);
the gRPC server lives beside them and is only imported when serving.
"""
