"""Every Leyline message survives binary and JSON round trips with every field set."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests.contract.leyline_descriptors import all_messages

MAX_DEPTH = 4


def _scalar(field: FieldDescriptor, salt: int):
    t = field.type
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values if v.number != 0]
        return values[salt % len(values)]
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5 + salt
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{salt}"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([salt % 256, 0, 255])
    return 7 + salt  # every integer type


def populate(msg: Message, depth: int = 0) -> Message:
    """Set every field (one member of each oneof) to a non-default value."""
    seen_oneofs: set[str] = set()
    for field in msg.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            value_field = field.message_type.fields_by_name["value"]
            container = getattr(msg, field.name)
            if value_field.message_type is not None:
                if depth < MAX_DEPTH:
                    populate(container["k"], depth + 1)
            else:
                container["k"] = _scalar(value_field, 1)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                continue
            if field.is_repeated:
                populate(getattr(msg, field.name).add(), depth + 1)
            else:
                populate(getattr(msg, field.name), depth + 1)
        elif field.is_repeated:
            getattr(msg, field.name).extend([_scalar(field, 0), _scalar(field, 1)])
        else:
            setattr(msg, field.name, _scalar(field, 0))
    return msg


MESSAGES = all_messages()


def _instance(desc):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)()


def test_contract_has_every_concern():
    names = {d.name for d in MESSAGES}
    for required in (
        "SeedState", "GateResult", "BlueprintSpec", "KernelArtifact", "LayerHealth",
        "TrainingMetrics", "ResourceState", "TrainingSnapshot", "ModelGraph",
        "AdaptationDecision", "DecisionAck", "TelemetryEvent", "FieldReport",
        "CompileEvent", "CatalogEvent", "Alert",
    ):
        assert required in names


@pytest.mark.parametrize("desc", MESSAGES, ids=lambda d: d.full_name)
def test_binary_roundtrip(desc):
    msg = populate(_instance(desc))
    data = msg.SerializeToString()
    again = _instance(desc)
    again.ParseFromString(data)
    assert again == msg
    if desc.fields:
        assert data, "a populated message must not serialize to nothing"


@pytest.mark.parametrize("desc", MESSAGES, ids=lambda d: d.full_name)
def test_json_roundtrip(desc):
    msg = populate(_instance(desc))
    text = json_format.MessageToJson(msg)
    again = json_format.Parse(text, _instance(desc))
    assert again == msg


@pytest.mark.parametrize("desc", MESSAGES, ids=lambda d: d.full_name)
def test_every_oneof_member_roundtrips(desc):
    for oneof in desc.oneofs:
        for field in oneof.fields:
            msg = _instance(desc)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                populate(getattr(msg, field.name), 1)
                getattr(msg, field.name).SetInParent()
            else:
                setattr(msg, field.name, _scalar(field, 0))
            again = _instance(desc)
            again.ParseFromString(msg.SerializeToString())
            assert again.WhichOneof(oneof.name) == field.name
