"""How CLI commands reach a local stack started with `esper up --tls`: when the environment
says nothing about TLS (no ESPER_TLS) and the stack in $ESPER_STATE_DIR (or ./.esper) runs
with mutual TLS, the command's channels use the stack's certificates: `admin` for the
catalogue, jobs, runs and policy commands, `tolaria` for `esper train`. Explicit ESPER_TLS*
settings always win (a remote deployment, another identity)."""

from __future__ import annotations

import os
from pathlib import Path

from esper.cli.addresses import DEFAULT_STATE_DIR, STATE_DIR_ENV

# Commands that manage the stack or are a server themselves: their security is their own.
OWN_SECURITY = frozenset({"up", "down", "status", "serve", "certs"})
IDENTITY_OF = {"train": "tolaria"}
DEFAULT_IDENTITY = "admin"


def use_stack_tls(command: str) -> bool:
    """Point this process's channels at the stack's certificates if it should; True if so."""
    if command in OWN_SECURITY or os.environ.get("ESPER_TLS", "").strip():
        return False
    from esper.runtime.stack.state import load_state  # the stack's modules load on demand
    from esper.runtime.stack.tls import client_env

    state_dir = Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR)).expanduser().resolve()
    try:
        state = load_state(state_dir)
    except Exception:  # noqa: BLE001 - a broken stack file just means "no local stack"
        return False
    if state is None or not state.tls:
        return False
    os.environ.update(client_env(state_dir, IDENTITY_OF.get(command, DEFAULT_IDENTITY)))
    return True
