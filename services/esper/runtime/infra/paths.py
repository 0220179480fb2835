"""Where each component keeps its log and pid file inside a state directory."""

from __future__ import annotations

from pathlib import Path


def log_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "logs" / f"{name}.log"


def pid_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "run" / f"{name}.pid"
