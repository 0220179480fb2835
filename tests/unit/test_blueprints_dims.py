"""Dimension expressions in C: good, bad and hostile input."""

import pytest

from esper.blueprints.dims import MAX_ABS_VALUE, MAX_DEPTH, MAX_EXPR_LENGTH, eval_dim, parse_dim


@pytest.mark.parametrize(
    ("expr", "c", "want"),
    [
        ("C", 64, 64),
        ("17", 64, 17),
        ("4*C", 64, 256),
        ("C/16", 64, 4),
        ("C/3", 8, 2),  # floor division
        ("-C/3", 8, -3),  # floor, not truncation
        ("max(C/16,4)", 32, 4),
        ("max(C/16, 4)", 256, 16),
        ("min(C, 64)", 256, 64),
        ("2*C*4*C + 5*C", 10, 850),
        ("3*C*(8*C/3)", 16, 2016),
        ("C - 2 - 3", 10, 5),  # left-associative
        ("C / 2 / 2", 16, 4),
        ("2 + 3 * C", 2, 8),  # precedence
        ("(2 + 3) * C", 2, 10),
        ("  C  ", 5, 5),
        ("max(min(C,8),max(2,3))", 100, 8),
    ],
)
def test_evaluates(expr, c, want):
    assert eval_dim(expr, c) == want


@pytest.mark.parametrize(
    ("expr", "pos", "fragment"),
    [
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("C+", 2, "expected a number"),
        ("x", 0, "unexpected character 'x'"),
        ("c", 0, "unexpected character 'c'"),
        ("C**2", 2, "expected a number"),
        ("C C", 2, "unexpected 'C'"),
        ("max(C)", 5, "expected ','"),
        ("max C", 4, "expected '('"),
        ("(C", 2, "expected ')'"),
        ("C)", 1, "unexpected ')'"),
        ("__import__('os')", 0, "unexpected character"),
        ("C; 1", 1, "unexpected character ';'"),
        ("1.5*C", 1, "unexpected character '.'"),
    ],
)
def test_bad_syntax_names_expression_and_position(expr, pos, fragment):
    with pytest.raises(ValueError) as exc:
        parse_dim(expr)
    msg = str(exc.value)
    assert repr(expr) in msg
    assert f"position {pos}" in msg
    assert fragment in msg


def test_division_by_zero_is_an_error_at_evaluation():
    with pytest.raises(ValueError, match=r"'C/\(C-8\)' at position 1: division by zero at C=8"):
        eval_dim("C/(C-8)", 8)
    assert eval_dim("C/(C-8)", 16) == 2


def test_huge_literals_and_overflow_are_refused():
    with pytest.raises(ValueError, match="integer literal too large"):
        parse_dim("9" * 40)
    with pytest.raises(ValueError, match="exceeds"):
        parse_dim(str(MAX_ABS_VALUE + 1))
    with pytest.raises(ValueError, match="overflows"):
        eval_dim("*".join(["C"] * 20), 1024)
    with pytest.raises(ValueError, match="overflows"):
        eval_dim("999999999*999999999", 1)


def test_deep_nesting_and_long_input_are_refused():
    deep = "(" * (MAX_DEPTH + 5) + "C" + ")" * (MAX_DEPTH + 5)
    with pytest.raises(ValueError, match="nested deeper"):
        parse_dim(deep)
    with pytest.raises(ValueError, match="nested deeper"):
        parse_dim("-" * (MAX_DEPTH + 5) + "C")
    with pytest.raises(ValueError, match="longer than"):
        parse_dim("+".join(["C"] * MAX_EXPR_LENGTH))
    ok = "(" * 10 + "C" + ")" * 10
    assert eval_dim(ok, 3) == 3


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError):
        parse_dim(4)  # type: ignore[arg-type]
