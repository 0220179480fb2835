"""`esper oona`: look at the event bus.

    esper oona topics [--ensure]               topics on the broker with their partitions
    esper oona tail TOPIC [--from-beginning] [--max N] [--json]
    esper oona decode [--framing kcat|base64] [--json] < values

The broker is `--bootstrap`, else $ESPER_KAFKA_BOOTSTRAP, else the local stack's broker
(`esper up`, state under $ESPER_STATE_DIR or ./.esper), else 127.0.0.1:9092.

`decode` reads raw record values from stdin, for tools that cannot speak to the local
broker but can read the compose stack's Apache Kafka, like Debian's kcat. Framings:

  kcat    (default) each value as `<length>:<bytes>` with an optional newline after it:
              kcat -C -b localhost:9092 -t esper.telemetry.training -e \\
                   -f '%S:%s\\n' | esper oona decode
          (kcat prints `%S` as the value's byte length, -1 for a null value.)
  base64  one base64-encoded value per line (blank lines are skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiokafka.errors import KafkaError
from google.protobuf import json_format, text_format

from esper.cli.addresses import resolve_address
from esper.cli.errors import UsageError
from esper.leyline.v1 import telemetry_pb2
from esper.oona.consumer import OonaConsumer
from esper.oona.envelope import DecodeError, decode_event, payload_kind
from esper.oona.framing import FramingError, read_base64_lines, read_kcat_frames
from esper.oona.topics import TOPICS_BY_NAME, describe_topics, ensure_topics

BOOTSTRAP_ENV = "ESPER_KAFKA_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "oona",
        help="inspect the Oona event bus (Kafka)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="oona_action", metavar="ACTION")
    actions.required = True

    topics = actions.add_parser("topics", help="list topics with their partitions")
    _add_bootstrap(topics)
    topics.add_argument(
        "--ensure",
        action="store_true",
        help="create the topics of DESIGN.md that are missing first",
    )
    topics.set_defaults(func=run_topics)

    tail = actions.add_parser("tail", help="print live events of a topic as readable text")
    _add_bootstrap(tail)
    tail.add_argument("topic", help="topic name, e.g. esper.telemetry.training")
    tail.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest retained event instead of new ones",
    )
    tail.add_argument(
        "--max",
        type=int,
        default=0,
        metavar="N",
        help="stop after N events (default: run until Ctrl-C)",
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(func=run_tail)

    decode = actions.add_parser("decode", help="decode raw event values read from stdin")
    decode.add_argument(
        "--framing",
        choices=("kcat", "base64"),
        default="kcat",
        help="how values are delimited on stdin (see `esper oona --help`)",
    )
    decode.add_argument("--json", action="store_true", help="one JSON object per event")
    decode.set_defaults(func=run_decode)


def _add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap",
        default=None,
        help=f"broker HOST:PORT (default: ${BOOTSTRAP_ENV} or the local stack)",
    )


def resolve_bootstrap(flag: str | None) -> str:
    return resolve_address(flag, BOOTSTRAP_ENV, "broker") or DEFAULT_BOOTSTRAP


def format_event(event: telemetry_pb2.TelemetryEvent, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(json_format.MessageToDict(event), sort_keys=True)
    severity = telemetry_pb2.Severity.Name(event.severity).removeprefix("SEVERITY_")
    head = (
        f"--- {event.time.ToJsonString()} {severity} {payload_kind(event)} "
        f"source={event.source} run={event.run_id or '-'} id={event.event_id}"
    )
    body = text_format.MessageToString(getattr(event, payload_kind(event)), as_one_line=True)
    return f"{head}\n{body}"


def run_topics(args: argparse.Namespace) -> int:
    bootstrap = resolve_bootstrap(args.bootstrap)
    try:
        if args.ensure:
            asyncio.run(ensure_topics(bootstrap))
        described = asyncio.run(describe_topics(bootstrap))
    except (KafkaError, OSError, TimeoutError) as exc:
        print(f"esper oona topics: broker {bootstrap} unreachable: {exc}", file=sys.stderr)
        return 1
    print(f"{'TOPIC':<32} {'PARTITIONS':>10}  CARRIES")
    for name in sorted(described):
        spec = TOPICS_BY_NAME.get(name)
        carries = (
            ", ".join(spec.kinds) if spec and spec.kinds else ("-" if spec else "(not Esper's)")
        )
        print(f"{name:<32} {described[name]:>10}  {carries}")
    return 0


def run_tail(args: argparse.Namespace) -> int:
    if args.max < 0:
        raise UsageError("--max: must be >= 0")
    if not args.topic.strip():
        raise UsageError("TOPIC: must not be empty")
    bootstrap = resolve_bootstrap(args.bootstrap)
    try:
        asyncio.run(_tail(bootstrap, args.topic, args.from_beginning, args.max, args.json))
    except KeyboardInterrupt:
        return 0
    return 0


async def _tail(
    bootstrap: str, topic: str, from_beginning: bool, limit: int, as_json: bool
) -> None:
    consumer = OonaConsumer(
        bootstrap,
        [topic],
        group_id=None,
        from_beginning=from_beginning,
        client_id="esper-oona-tail",
    )
    await consumer.start()
    try:
        shown = 0
        async for consumed in consumer.events():
            print(format_event(consumed.event, as_json=as_json), flush=True)
            shown += 1
            if limit and shown >= limit:
                return
    finally:
        await consumer.stop()


def run_decode(args: argparse.Namespace) -> int:
    framing = read_kcat_frames if args.framing == "kcat" else read_base64_lines
    errors = 0
    try:
        for value in framing(sys.stdin.buffer):
            try:
                event = decode_event(value)
            except DecodeError as exc:
                errors += 1
                print(f"esper oona decode: skipped a value: {exc}", file=sys.stderr)
                continue
            print(format_event(event, as_json=args.json), flush=True)
    except FramingError as exc:
        print(f"esper oona decode: {exc}", file=sys.stderr)
        return 1
    return 1 if errors else 0
