"""`esper oona decode` framings and event formatting (no broker)."""

import base64
import io
import json
import subprocess
import sys

import pytest

from esper.cli.oona import format_event, resolve_bootstrap
from esper.leyline.v1 import signals_pb2
from esper.oona.envelope import new_event
from esper.oona.framing import FramingError, read_base64_lines, read_kcat_frames


def _value(step: int) -> bytes:
    return new_event(
        source="tolaria", run_id="run-7", snapshot=signals_pb2.TrainingSnapshot(step=step)
    ).SerializeToString()


def test_kcat_framing_reads_binary_values_with_newlines_inside():
    values = [_value(1), b"a\nb:c", _value(2)]
    stream = b"".join(b"%d:%s\n" % (len(v), v) for v in values) + b"-1:\n"
    assert list(read_kcat_frames(io.BytesIO(stream))) == values


@pytest.mark.parametrize("stream", [b"12:short", b"abc:xx", b"9" * 30 + b":", b"17"])
def test_kcat_framing_rejects_corrupt_input(stream):
    with pytest.raises(FramingError):
        list(read_kcat_frames(io.BytesIO(stream)))


def test_base64_framing():
    values = [_value(1), _value(2)]
    stream = b"\n".join(base64.b64encode(v) for v in values) + b"\n\n"
    assert list(read_base64_lines(io.BytesIO(stream))) == values
    with pytest.raises(FramingError, match="line 1"):
        list(read_base64_lines(io.BytesIO(b"not base64!\n")))


def test_format_event_text_and_json():
    event = new_event(
        source="tolaria", run_id="run-7", snapshot=signals_pb2.TrainingSnapshot(step=3)
    )
    text = format_event(event, as_json=False)
    assert "snapshot" in text and "run=run-7" in text and "step: 3" in text
    assert json.loads(format_event(event, as_json=True))["snapshot"]["step"] == "3"


def test_bootstrap_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("ESPER_KAFKA_BOOTSTRAP", raising=False)
    assert resolve_bootstrap(None) == "127.0.0.1:9092"
    (tmp_path / "stack.json").write_text(json.dumps({"ports": {"broker": 19092}}))
    assert resolve_bootstrap(None) == "127.0.0.1:19092"
    monkeypatch.setenv("ESPER_KAFKA_BOOTSTRAP", "h:1")
    assert resolve_bootstrap(None) == "h:1"
    assert resolve_bootstrap("x:2") == "x:2"


def test_decode_command_prints_events_and_reports_garbage():
    stream = b"".join(b"%d:%s\n" % (len(v), v) for v in [_value(5), b"\xff\xfe garbage"])
    proc = subprocess.run(
        [sys.executable, "-m", "esper.cli.main", "oona", "decode"],
        input=stream,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert b"step: 5" in proc.stdout
    assert b"skipped a value" in proc.stderr
