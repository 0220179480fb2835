"""The CLI's argument types for counts and amounts refuse what they cannot take, saying
what they expected and what they got."""

from __future__ import annotations

import argparse

import pytest

from esper.cli.numbers import non_negative_float, non_negative_int, positive_float, positive_int


def test_good_values_pass_through() -> None:
    assert non_negative_int("0") == 0 and positive_int("7") == 7
    assert non_negative_float("0") == 0.0 and positive_float("2.5") == 2.5


@pytest.mark.parametrize("parse, text, words", [
    (non_negative_int, "x", "'x' is not an integer"),
    (non_negative_int, "1.5", "is not an integer"),
    (non_negative_int, "-1", "must be >= 0, got -1 \\(negative\\)"),
    (positive_int, "0", "must be > 0, got 0"),
    (positive_int, "-3", "must be > 0, got -3 \\(negative\\)"),
    (non_negative_float, "nan", "must be a finite number, got nan"),
    (non_negative_float, "inf", "must be a finite number, got inf"),
    (non_negative_float, "1e400", "got 1e400"),
    (non_negative_float, "-0.5", "must be >= 0, got -0.5"),
    (positive_float, "0", "must be > 0"),
    (positive_float, "five", "'five' is not a number"),
])
def test_bad_values_are_refused_with_the_reason(parse, text, words) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        parse(text)
