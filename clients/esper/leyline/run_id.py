"""The run-id rule, one definition for every part: Tolaria checks it when a session is
attached, Tamiyo when a session opens or a Decide arrives. Run ids are log keys, Kafka
message keys and Nissa's primary keys, so they are printable and short."""

from __future__ import annotations

import re

MAX_RUN_ID_LENGTH = 128
# A letter or digit first (never a dash that reads as a flag), then letters, digits and
# . _ : - (fullmatch: a trailing newline is not allowed either).
RUN_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:\-]{{0,{MAX_RUN_ID_LENGTH - 1}}}")
RUN_ID_RULE = f"1-{MAX_RUN_ID_LENGTH} of A-Z a-z 0-9 . _ : -, starting with a letter or digit"


def run_id_problem(run_id: str) -> str | None:
    """Why `run_id` is not a valid run id, or None when it is."""
    if isinstance(run_id, str) and RUN_ID_PATTERN.fullmatch(run_id):
        return None
    return f"{str(run_id)[:40]!r} is not a run id ({RUN_ID_RULE})"


def validate_run_id(run_id: str) -> str:
    """`run_id` itself when valid; ValueError saying why otherwise."""
    problem = run_id_problem(run_id)
    if problem is not None:
        raise ValueError(problem)
    return run_id
