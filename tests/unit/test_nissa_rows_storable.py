"""What PostgreSQL cannot store is found before the COPY, and named: a NUL in any string
that goes into a text column of Nissa's tables; strings kept only inside `body` (bytea)
are stored as they are."""

from __future__ import annotations

import pytest

from esper.leyline.v1 import control_pb2, signals_pb2, telemetry_pb2
from esper.nissa.rows import TEXT_FIELDS, unstorable_reason
from esper.oona import new_event


def test_clean_events_are_storable() -> None:
    event = new_event(source="tolaria", run_id="r1", snapshot=signals_pb2.TrainingSnapshot())
    assert unstorable_reason(event) is None


@pytest.mark.parametrize(("event", "field"), [
    (new_event(source="tolaria", run_id="r\x00", snapshot=signals_pb2.TrainingSnapshot()),
     "run_id"),
    (new_event(source="t\x00", run_id="r", snapshot=signals_pb2.TrainingSnapshot()), "source"),
    (new_event(source="kasmina", run_id="r",
               seed_transition=telemetry_pb2.SeedTransition(reason="grew\x00")),
     "seed_transition.reason"),
    (new_event(source="tolaria", run_id="r",
               ack=control_pb2.DecisionAck(decision_id="d\x00")), "ack.decision_id"),
    (new_event(source="nissa", alert=telemetry_pb2.Alert(message="m\x00")), "alert.message"),
])
def test_a_nul_in_a_text_column_is_named(event, field: str) -> None:
    assert unstorable_reason(event) == (
        f"{field} holds a NUL character, which PostgreSQL text cannot store")


def test_strings_stored_only_as_bytes_may_hold_nul() -> None:
    snap = signals_pb2.TrainingSnapshot()
    snap.layers.add(layer_id="conv\x00")
    assert unstorable_reason(new_event(source="tolaria", run_id="r", snapshot=snap)) is None


def test_every_payload_kind_has_its_text_fields() -> None:
    kinds = {f.name for f in telemetry_pb2.TelemetryEvent.DESCRIPTOR.oneofs_by_name["payload"]
             .fields}
    assert kinds | {""} == set(TEXT_FIELDS)
