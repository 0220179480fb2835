"""Episodes from where recorded runs live besides Simic's own files: Oona topic dumps and
Nissa's history (through Nissa's ListEvents RPC; Simic never reads Nissa's tables).

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
# Events asked for per ListEvents page (Nissa's maximum; Nissa also ends a page at ~4 MiB).
NISSA_PAGE_SIZE = 1000
# Seconds one ListEvents page may take before the read fails.
NISSA_TIMEOUT_S = 30.0


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
    address: str, context: SessionOpen, candidates: list[KernelCandidate], *,
    run_ids: list[str] | None = None, timeout_s: float = NISSA_TIMEOUT_S,
) -> Dataset:
    """Episodes from the runs Nissa recorded, read through its API (ListEvents at
    `address`, HOST:PORT; channel security from ESPER_TLS* / ESPER_TOKEN), for `run_ids`
    or every run. Each run is one consistent listing, paged. DatasetError when Nissa cannot
    be reached or refuses (the message says which and why)."""
    from esper.leyline.v1 import nissa_pb2
    from esper.rpc.channels import ChannelConfigError
    from esper.rpc.clients import NissaClient
    from esper.rpc.errors import ServiceError

    try:
        nissa = NissaClient(address, timeout_s=timeout_s)
    except ChannelConfigError as exc:
        raise DatasetError(f"Nissa at {address!r}: {exc}") from None
    events: list[TelemetryEvent] = []
    kinds = sorted(EPISODE_EVENT_KINDS)
    try:
        async with nissa:
            for run_id in dict.fromkeys(run_ids) if run_ids else [""]:
                request = nissa_pb2.ListEventsRequest(run_id=run_id, kinds=kinds, page_size=NISSA_PAGE_SIZE)
                events.extend([event async for event in nissa.list_events(request)])
    except ServiceError as exc:
        raise DatasetError(str(exc)) from None
    return _dataset(events, context, candidates, ReadProblems(), f"Nissa's history at {address}")


def _dataset(
    events: list[TelemetryEvent], context: SessionOpen, candidates: list[KernelCandidate],
    problems: ReadProblems, where: str,
) -> Dataset:
    episodes = [e for e in episodes_from_events(events, context, candidates) if e.of_kind("decision")]
    if not episodes:
        raise DatasetError(f"no run with decisions in {where} ({len(events)} events read)")
    return Dataset(episodes, problems)
