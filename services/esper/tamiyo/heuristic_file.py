"""The heuristic's thresholds from a TOML file (TamiyoConfig.heuristic_config).

The file's top-level keys are fields of `HeuristicConfig` (documented there); missing keys
keep their defaults. A short run (the demo, tests) needs shorter stages than the defaults,
which suit long runs, e.g.:

    plateau_patience = 1
    training_steps = 30
    blend_steps = 30
    shadow_steps = 10
    probation_steps = 30

An unknown key, a wrong type or a value out of range is a ConfigError naming the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import fields, replace
from pathlib import Path

from esper.policy import HeuristicConfig
from esper.runtime.config import ConfigError

SETTING = "heuristic_config"
# Largest step count accepted for a stage or horizon: far beyond any run, small enough to
# catch a typo of several extra digits.
MAX_STEPS = 10_000_000


def load_heuristic_config(path: str) -> HeuristicConfig:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{SETTING}: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{SETTING}: {path} is not valid TOML: {exc}") from None
    return replace(HeuristicConfig(), **heuristic_overrides(doc, f"{SETTING}: {path}"))


def heuristic_overrides(doc: dict, where: str) -> dict[str, int | float | bool]:
    """`doc`'s keys as checked `HeuristicConfig` values (a ConfigError names the key,
    prefixed with `where`)."""
    types = {f.name: type(f.default) for f in fields(HeuristicConfig)}
    values = {}
    for key, raw in doc.items():
        if key not in types:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(types))})")
        values[key] = _checked(where, key, raw, types[key])
    return values


def _checked(where: str, key: str, raw: object, want: type) -> int | float | bool:
    where = f"{where}: {key}"
    if want is bool:  # a switch: TOML's true or false, never a number standing in for one
        if not isinstance(raw, bool):
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {raw!r}")
    if want is int:
        if not isinstance(raw, int):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        if not 0 <= raw <= MAX_STEPS:
            raise ConfigError(f"{where}: {raw} is not in [0, {MAX_STEPS}]")
        return raw
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where}: {raw} must be a finite number >= 0")
    return value
