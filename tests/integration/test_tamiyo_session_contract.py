"""The Session protocol as tamiyo.proto writes it, checked against a real Tamiyo over
loopback: the contract version to send, the idle timeout told in the accept, every
SessionWarningCode as text and enum, an empty run id meaning the session's run, the
epoch-end repeat, and a decision's expiry releasing the one-outstanding rule."""

from __future__ import annotations

import pytest

from esper.leyline.v1.common_pb2 import ContractVersion
from esper.leyline.v1.control_pb2 import AckStatus, DecisionAck
from esper.leyline.v1.lifecycle_pb2 import SeedStage
from esper.leyline.v1.tamiyo_pb2 import SessionRequest, SessionWarningCode
from esper.leyline.version import contract_version, decode_contract_version
from tests.integration.test_tamiyo_server import open_message, open_session, snap, tamiyo
from tests.unit.test_tamiyo_support import seed

pytestmark = pytest.mark.integration

S = SeedStage
W = SessionWarningCode


def test_the_version_to_send_is_the_highest_contract_version_value():
    highest = max(ContractVersion.values())
    assert ContractVersion.Name(highest) == "CONTRACT_VERSION_{0.major}_{0.minor}_{0.patch}".format(
        contract_version())
    assert decode_contract_version(highest) == contract_version()
    assert decode_contract_version(ContractVersion.CONTRACT_VERSION_1_0_0).minor == 0


async def test_accept_tells_the_idle_timeout_and_the_contract_version():
    async with tamiyo(heartbeat_seconds=2, idle_heartbeats=4) as (_, stub, _c):
        client, accept = await open_session(stub, "run-accept")
        assert accept.heartbeat_seconds == 2 and accept.idle_timeout_seconds == 8
        assert accept.contract_version == contract_version()
        await client.close()


async def test_every_warning_carries_its_code_as_text_and_as_enum():
    async with tamiyo(max_slots=8) as (_, stub, _c):
        client, _ = await open_session(stub, "run-codes")
        await client.send(snapshot=snap(10, "run-codes", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        decision = (await client.next("decision")).decision
        non_finite = snap(11, "run-codes")
        non_finite.metrics.train_loss = float("inf")
        oversized = snap(12, "run-codes")
        for i in range(9):
            oversized.seeds.add(slot_id=f"x{i}")
        bad_stream = snap(12, "run-codes")
        bad_stream.stream.width, bad_stream.stream.declared_width = 64, 32
        bad_stream.stream.max_width, bad_stream.stream.feature_multiple = 48, 4
        ack = {"decision_id": decision.decision_id, "run_id": "run-codes"}
        applied = DecisionAck(**ack, status=AckStatus.ACK_STATUS_APPLIED)
        steps = [  # (request, the warning it draws, or None for a good message)
            (SessionRequest(snapshot=non_finite), W.SESSION_WARNING_CODE_NON_FINITE),
            (SessionRequest(snapshot=oversized), W.SESSION_WARNING_CODE_OVERSIZED),
            (SessionRequest(snapshot=bad_stream), W.SESSION_WARNING_CODE_INVALID_STREAM),
            (SessionRequest(snapshot=snap(10, "run-codes")), W.SESSION_WARNING_CODE_REPEATED_SNAPSHOT),
            (SessionRequest(snapshot=snap(9, "run-codes")), W.SESSION_WARNING_CODE_OUT_OF_ORDER_SNAPSHOT),
            (SessionRequest(snapshot=snap(13, "run-codes", [seed("ghost", S.SEED_STAGE_TRAINING)])),
             W.SESSION_WARNING_CODE_UNKNOWN_SLOT),
            (SessionRequest(snapshot=snap(14, "other-run")), W.SESSION_WARNING_CODE_WRONG_RUN),
            (SessionRequest(ack=DecisionAck(decision_id="nope", status=AckStatus.ACK_STATUS_APPLIED)),
             W.SESSION_WARNING_CODE_UNKNOWN_DECISION),
            (SessionRequest(ack=DecisionAck(**ack)), W.SESSION_WARNING_CODE_INVALID_ACK),
            (SessionRequest(ack=applied), None),
            (SessionRequest(ack=applied), W.SESSION_WARNING_CODE_DUPLICATE_ACK),
            (SessionRequest(open=open_message("run-codes")), W.SESSION_WARNING_CODE_REPEATED_OPEN),
            (SessionRequest(), W.SESSION_WARNING_CODE_EMPTY_MESSAGE),
        ]
        for request, code in steps:
            await client.queue.put(request)
            if code is None:
                continue
            warning = (await client.next("warning")).warning
            assert warning.warning_code == code, (W.Name(code), warning)
            assert warning.code == W.Name(code).removeprefix("SESSION_WARNING_CODE_").lower()
            assert warning.detail
        await client.close()
        covered = {code for _, code in steps if code is not None}
        # STEP_JUMP and QUOTA_EXCEEDED come from the bounds on steps and field reports,
        # tested with them; the text-to-enum mapping of every code is a unit test.
        assert covered == set(W.values()) - {W.SESSION_WARNING_CODE_UNSPECIFIED, W.SESSION_WARNING_CODE_STEP_JUMP,
                                             W.SESSION_WARNING_CODE_QUOTA_EXCEEDED}


async def test_an_empty_run_id_inside_a_session_means_the_sessions_run():
    async with tamiyo() as (_, stub, _c):
        client, _ = await open_session(stub, "run-empty-id")
        await client.send(snapshot=snap(10, "", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        decision = (await client.next("decision")).decision
        assert decision.run_id == "run-empty-id" and decision.advance.slot_id == "s1"
        await client.send(ack=DecisionAck(decision_id=decision.decision_id, status=AckStatus.ACK_STATUS_APPLIED))
        # The ack without a run id counted: a second one is a duplicate, not unknown.
        await client.send(ack=DecisionAck(decision_id=decision.decision_id, status=AckStatus.ACK_STATUS_APPLIED))
        assert (await client.next("warning")).warning.warning_code == W.SESSION_WARNING_CODE_DUPLICATE_ACK
        await client.close()


async def test_the_epoch_end_repeat_is_accepted_once_and_waits_are_never_sent():
    async with tamiyo() as (_, stub, _c):
        client, _ = await open_session(stub, "run-epoch-end")
        periodic = snap(10, "run-epoch-end")
        periodic.epoch_end, periodic.sequence = False, 1
        await client.send(snapshot=periodic)  # nothing to do: the policy waits, nothing is sent
        closing = snap(10, "run-epoch-end", [seed("s1", S.SEED_STAGE_GERMINATED)])
        closing.sequence = 2
        await client.send(snapshot=closing)
        first = await client.next()  # the wait for the periodic snapshot never arrives
        assert first.WhichOneof("message") == "decision", first
        assert first.decision.issued_at_step == 10 and first.decision.advance.slot_id == "s1"
        again = snap(10, "run-epoch-end")
        again.sequence = 3
        await client.send(snapshot=again)
        assert (await client.next("warning")).warning.warning_code == W.SESSION_WARNING_CODE_REPEATED_SNAPSHOT
        await client.close()


async def test_an_expired_decision_no_longer_holds_back_the_next():
    async with tamiyo() as (_, stub, _c):
        client, _ = await open_session(stub, "run-expiry")
        await client.send(snapshot=snap(10, "run-expiry", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        first = (await client.next("decision")).decision
        # Unacked and past its expiry step: the run is free for a new decision.
        late = first.expires_at_step + 1
        await client.send(snapshot=snap(late, "run-expiry", [seed("s1", S.SEED_STAGE_GERMINATED)]))
        second = (await client.next("decision")).decision
        assert second.decision_id != first.decision_id and second.issued_at_step == late
        await client.close()
