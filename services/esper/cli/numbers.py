"""Argument types for counts and amounts on the command line (argparse `type=`): each says
what it expected and what it got."""

from __future__ import annotations

import argparse
import math


def non_negative_int(text: str) -> int:
    return _at_least(_number(text, int, "an integer"), text, strict=False)


def positive_int(text: str) -> int:
    return _at_least(_number(text, int, "an integer"), text, strict=True)


def non_negative_float(text: str) -> float:
    return _at_least(_number(text, float, "a number"), text, strict=False)


def positive_float(text: str) -> float:
    return _at_least(_number(text, float, "a number"), text, strict=True)


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _at_least(value, text: str, *, strict: bool):
    """`value` when it is > 0 (strict) or >= 0; a negative one is named as such."""
    if value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}"
                                         + (" (negative)" if value < 0 else ""))
    return value
