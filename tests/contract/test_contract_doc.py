"""docs/contract.md is what clients in other languages read: its tables of id formats,
Oona topics, keys and headers must say what the code does."""

from __future__ import annotations

import re

import pytest

from esper.leyline import ids
from esper.leyline.v1 import telemetry_pb2
from esper.oona import deadletter, envelope
from esper.oona.topics import TOPICS, event_key
from tests.contract.leyline_descriptors import GENERATED_SET, ROOT, load_set

DOC = ROOT / "docs" / "contract.md"
# A payload kind in the doc: a backticked lower_snake oneof name.
KIND = re.compile(r"`([a-z][a-z0-9_]*)`")


def table(after_heading: str, first_column: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table under `after_heading` whose header
    starts with `first_column`."""
    text = DOC.read_text(encoding="utf-8").split(after_heading, 1)[1]
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def unquote(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


def test_id_patterns_are_the_code_s():
    patterns = {row[0]: unquote(row[2]) for row in table("## Id formats", "id")}
    assert patterns == {
        "run id": ids.RUN_ID_PATTERN.pattern,
        "seed id": ids.SEED_ID_PATTERN.pattern,
        "decision id": ids.UUID_PATTERN.pattern,
        "session id": ids.UUID_PATTERN.pattern,
        "event id": ids.UUID_PATTERN.pattern,
        "kernel id": ids.KERNEL_ID_PATTERN.pattern,
        "job id": ids.JOB_ID_PATTERN.pattern,
    }


def test_every_topic_is_documented_with_its_partitions_and_payloads():
    rows = {unquote(row[0]): row for row in table("## Oona", "topic")}
    assert set(rows) == {spec.name for spec in TOPICS}, "docs/contract.md must list every topic of esper.oona.topics"
    for spec in TOPICS:
        row = rows[spec.name]
        assert int(row[1]) == spec.partitions, spec.name
        assert tuple(KIND.findall(row[2])) == spec.kinds, spec.name


def _event(kind: str, run_id: str) -> telemetry_pb2.TelemetryEvent:
    event = telemetry_pb2.TelemetryEvent(run_id=run_id)
    payload = getattr(event, kind)
    for name, value in (("blueprint_ref", "BP-X@1.0.0"), ("service", "urza")):
        if name in payload.DESCRIPTOR.fields_by_name:
            setattr(payload, name, value)
    payload.SetInParent()
    return event


@pytest.mark.parametrize("spec", [s for s in TOPICS if s.kinds], ids=lambda s: s.name)
def test_the_documented_key_is_the_one_the_producer_uses(spec):
    documented = {unquote(row[0]): row[3] for row in table("## Oona", "topic")}[spec.name]
    for kind in spec.kinds:
        if documented.startswith("run id"):
            assert event_key(_event(kind, "run-7")) == b"run-7"
        if documented == "blueprint ref":
            assert event_key(_event(kind, "")) == b"BP-X@1.0.0"
        if documented.endswith("service"):
            assert event_key(_event(kind, "")) == b"urza"


def test_headers_and_limits_are_the_envelope_s():
    headers = {unquote(row[0]): row[1] for row in table("## Oona", "header")}
    assert not any(name.startswith(deadletter.HEADER_PREFIX) for name in headers)
    assert set(headers) == {envelope.HEADER_CONTENT_TYPE, envelope.HEADER_TRACEPARENT, envelope.HEADER_TRACESTATE}
    assert unquote(headers["content-type"]) == envelope.CONTENT_TYPE
    assert envelope.MAX_EVENT_BYTES == 4 * 1024 * 1024 and "larger than 4 MiB" in DOC.read_text(encoding="utf-8")


def test_dead_letter_headers_and_limits_are_the_sender_s():
    letter = deadletter.DeadLetter(code=deadletter.CODE_UNSTORABLE, reason="why", topic="t", partition=1, offset=2,
                                   key=b"k", value=b"v")
    documented = {unquote(row[0]): row[1] for row in table("### Dead letters", "header")}
    assert list(documented) == [name for name, _ in letter.headers()]
    codes = KIND.findall(documented["esper-dlq-code"])
    assert codes == [deadletter.CODE_UNDECODABLE, deadletter.CODE_UNREADABLE_BATCH, deadletter.CODE_UNSTORABLE]
    text = DOC.read_text(encoding="utf-8")
    assert deadletter.MAX_DEAD_LETTER_VALUE_BYTES == 64 * 1024 and "cut to 64 KiB" in text
    assert deadletter.MAX_DEAD_LETTER_KEY_BYTES == 1024 and "cut to 1 KiB" in text
    assert f"at most {deadletter.MAX_REASON_CHARS:,} characters" in text


def _field_comment(message: str, field: str) -> str:
    """The comment on esper.leyline.v1.MESSAGE.FIELD in the generated descriptor set
    (4 = FileDescriptorProto.message_type, 2 = DescriptorProto.field)."""
    for fd in load_set(GENERATED_SET).file:
        for m, msg in enumerate(fd.message_type):
            if msg.name != message:
                continue
            f = next(i for i, x in enumerate(msg.field) if x.name == field)
            location = next(loc for loc in fd.source_code_info.location if list(loc.path) == [4, m, 2, f])
            return " ".join(location.leading_comments.split())
    raise KeyError(message)


def test_the_proto_comments_give_the_id_formats_of_the_code():
    kernel = _field_comment("KernelArtifact", "kernel_id")
    assert f'"{ids.KERNEL_ID_PREFIX}"' in kernel and f"first {ids.KERNEL_ID_DIGEST_CHARS} hex digits" in kernel
    for message in ("SeedState", "DecisionAck"):
        assert f'"{ids.SEED_ID_PREFIX}" and {ids.SHORT_RANDOM_HEX} hex' in _field_comment(message, "seed_id")
    assert f'"{ids.JOB_ID_PREFIX}" and 32 hex digits' in _field_comment("CompileJob", "job_id")
    assert ids.RUN_ID_RULE in _field_comment("TrainingSnapshot", "run_id")
    for message, field in (("AdaptationDecision", "decision_id"), ("SessionAccept", "session_id"),
                           ("TelemetryEvent", "event_id")):
        assert "random UUID" in _field_comment(message, field), (message, field)
