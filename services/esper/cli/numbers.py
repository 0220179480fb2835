"""Argument types for counts and amounts on the command line (argparse `type=`): each says
what it expected and what it got."""

from __future__ import annotations

import argparse
import math


def non_negative_int(text: str) -> int:
    return _non_negative(text, int, "an integer")


def non_negative_float(text: str) -> float:
    return _non_negative(text, float, "a number")


def positive_int(text: str) -> int:
    return _nonzero(non_negative_int(text))


def positive_float(text: str) -> float:
    return _nonzero(non_negative_float(text))


def _non_negative(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _nonzero(value):
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value
