"""Where a CLI command finds a server: the flag, else its `ESPER_*` environment variable,
else the local stack's port in `stack.json` (`esper up`, state under $ESPER_STATE_DIR or
./.esper); each command picks its own last resort (a default address or an error)."""

from __future__ import annotations

import os
from pathlib import Path

from esper.cli.errors import UsageError
from esper.runtime.config import ConfigError, check_address

STATE_DIR_ENV = "ESPER_STATE_DIR"
# Where `esper up` keeps the local stack when neither --state-dir nor $ESPER_STATE_DIR says.
DEFAULT_STATE_DIR = ".esper"
# The local stack's servers listen on loopback only.
STACK_HOST = "127.0.0.1"


def stack_address(component: str) -> str:
    """`127.0.0.1:PORT` of `component` in the local stack, or "" when there is no stack
    (or its stack.json is broken, which means the same here)."""
    from esper.runtime.stack.state import load_state  # the stack's modules load on demand

    try:
        state = load_state(Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR)))
    except Exception:  # noqa: BLE001 - a broken stack file just means "no local stack"
        return ""
    port = state.ports.get(component) if state else None
    if component == "tamiyo" and port and state is not None:
        return state.tamiyo_target()  # every replica's address, called round robin
    return f"{STACK_HOST}:{port}" if port else ""


def resolve_address(flag: str | None, env: str, component: str) -> str:
    """`flag`, else $`env`, else the local stack's `component`; "" when none says."""
    return flag or os.environ.get(env) or stack_address(component)


def checked_address(option: str, address: str) -> str:
    """`address` when it is HOST:PORT; otherwise a UsageError naming `option`."""
    try:
        check_address(option, address)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return address
