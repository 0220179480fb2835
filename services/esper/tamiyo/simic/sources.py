"""Episodes from where recorded runs live besides Simic's own files: Oona topic dumps and
Nissa's PostgreSQL history.

Telemetry carries no model graph and no kernel list, so both readers take the run's context
(`SessionOpen` with graph, capabilities, budget; the kernels it could germinate), e.g.
`episodes.task_context("digits")` for runs of the built-in example task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from esper.leyline.v1.tamiyo_pb2 import SessionOpen
from esper.leyline.v1.telemetry_pb2 import TelemetryEvent
from esper.leyline.v1.urza_pb2 import KernelCandidate
from esper.tamiyo.simic.dataset import (
    EPISODE_EVENT_KINDS,
    Dataset,
    DatasetError,
    episodes_from_events,
)
from esper.tamiyo.simic.records import ReadProblems

DUMP_FRAMINGS = ("kcat", "base64")
# Nissa rows read per query page: bounded memory for long histories.
NISSA_PAGE_ROWS = 5000


def _decode_all(values: Iterable[bytes], where: str, problems: ReadProblems) -> Iterator[TelemetryEvent]:
    from esper.oona.envelope import DecodeError, decode_event

    for i, value in enumerate(values):
        try:
            yield decode_event(value)
        except DecodeError as exc:
            problems.add(f"{where} value {i}", f"not a TelemetryEvent: {exc}; skipped")


def read_oona_dump(
    paths: Iterable[str | Path], context: SessionOpen, candidates: list[KernelCandidate],
    *, framing: str = "kcat",
) -> Dataset:
    """Episodes from dumps of Oona topics (`kcat -f '%S:%s\\n'` framing, or one base64 value
    per line), e.g. of esper.telemetry.training, esper.control.decisions and
    esper.field-reports; the events of several files are merged per run and put in run order."""
    from esper.oona.framing import FramingError, read_base64_lines, read_kcat_frames

    if framing not in DUMP_FRAMINGS:
        raise DatasetError(f"framing must be one of {DUMP_FRAMINGS}, got {framing!r}")
    reader = read_kcat_frames if framing == "kcat" else read_base64_lines
    problems = ReadProblems()
    events: list[TelemetryEvent] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DatasetError(f"no Oona dump at {path}")
        with open(path, "rb") as stream:
            frames = reader(stream)
            try:
                events.extend(_decode_all(frames, path.name, problems))
            except FramingError as exc:
                problems.add(path.name, f"{exc}; rest of the dump skipped")
    return _dataset(events, context, candidates, problems, "the Oona dumps")


async def read_nissa(
    dsn: str, context: SessionOpen, candidates: list[KernelCandidate], *, run_ids: list[str] | None = None,
) -> Dataset:
    """Episodes from Nissa's `nissa.events` table (every ingested TelemetryEvent, serialized),
    for `run_ids` or every run."""
    import asyncpg

    problems = ReadProblems()
    events: list[TelemetryEvent] = []
    conn = await asyncpg.connect(dsn)
    try:
        last = ""
        while True:
            rows = await conn.fetch(
                "SELECT event_id, kind, body FROM nissa.events WHERE event_id > $1"
                " AND ($2::text[] IS NULL OR run_id = ANY($2::text[])) AND kind = ANY($3::text[])"
                " ORDER BY event_id LIMIT $4",
                last, run_ids, sorted(EPISODE_EVENT_KINDS), NISSA_PAGE_ROWS,
            )
            if not rows:
                break
            last = rows[-1]["event_id"]
            events.extend(_decode_all((bytes(r["body"]) for r in rows), "nissa.events", problems))
    finally:
        await conn.close()
    return _dataset(events, context, candidates, problems, "Nissa's history")


def _dataset(
    events: list[TelemetryEvent], context: SessionOpen, candidates: list[KernelCandidate],
    problems: ReadProblems, where: str,
) -> Dataset:
    episodes = [e for e in episodes_from_events(events, context, candidates) if e.of_kind("decision")]
    if not episodes:
        raise DatasetError(f"no run with decisions in {where} ({len(events)} events read)")
    return Dataset(episodes, problems)
