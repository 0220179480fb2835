"""Dimension expressions in C, the slot width: ``"4*C"``, ``"C/16"``, ``"max(C/16,4)"``.

Grammar (no ``eval``; a small recursive-descent parser)::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := '-' unary | atom
    atom   := INT | 'C' | ('max' | 'min') '(' expr ',' expr ')' | '(' expr ')'

``/`` is integer floor division. Used for op dimension attributes and for the
``params_formula`` / ``flops_formula`` metadata of blueprints. Every error is a
``ValueError`` naming the expression and the character position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# Longest expression accepted: real formulas are a few dozen characters; this bounds parse work.
MAX_EXPR_LENGTH = 256
# Deepest nesting of parentheses/unary minus: bounds recursion so hostile input can't blow the stack.
MAX_DEPTH = 32
# Largest integer literal and intermediate value: well past any real dimension or FLOP count
# (2**53 keeps values exact as floats too) while refusing numbers that would be slow to compute.
MAX_ABS_VALUE = 2**53

_TOKEN = re.compile(r"\s*(?:(\d+)|(max|min|C)|([-+*/(),]))")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "int", "name", "op", "end"
    text: str
    pos: int


def _tokenize(expr: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None:
            start = pos + (len(expr[pos:]) - len(expr[pos:].lstrip()))
            raise _error(expr, start, f"unexpected character {expr[start]!r}")
        start = m.start(m.lastindex or 0)
        if m.group(1) is not None:
            if len(m.group(1)) > 16:
                raise _error(expr, start, "integer literal too large")
            toks.append(_Tok("int", m.group(1), start))
        elif m.group(2) is not None:
            toks.append(_Tok("name", m.group(2), start))
        else:
            toks.append(_Tok("op", m.group(3), start))
        pos = m.end()
    toks.append(_Tok("end", "", len(expr)))
    return toks


def _error(expr: str, pos: int, why: str) -> ValueError:
    return ValueError(f"bad dimension expression {expr!r} at position {pos}: {why}")


# An AST node is a tuple: ("int", n) | ("C",) | (op, left, right) | ("neg", x).
_Node = tuple


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = _tokenize(expr)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise _error(self.expr, tok.pos, f"expected {text!r}, got {tok.text or 'end'!r}")

    def parse(self) -> _Node:
        node = self.expr_(0)
        tok = self.peek()
        if tok.kind != "end":
            raise _error(self.expr, tok.pos, f"unexpected {tok.text!r}")
        return node

    def expr_(self, depth: int) -> _Node:
        node = self.term(depth)
        while self.peek().text in ("+", "-"):
            op = self.take().text
            node = (op, node, self.term(depth))
        return node

    def term(self, depth: int) -> _Node:
        node = self.unary(depth)
        while self.peek().text in ("*", "/"):
            tok = self.take()
            node = (tok.text, node, self.unary(depth), tok.pos)
        return node

    def unary(self, depth: int) -> _Node:
        tok = self.peek()
        if depth > MAX_DEPTH:
            raise _error(self.expr, tok.pos, f"nested deeper than {MAX_DEPTH}")
        if tok.text == "-":
            self.take()
            return ("neg", self.unary(depth + 1))
        return self.atom(depth)

    def atom(self, depth: int) -> _Node:
        tok = self.take()
        if tok.kind == "int":
            value = int(tok.text)
            if value > MAX_ABS_VALUE:
                raise _error(self.expr, tok.pos, f"integer literal exceeds {MAX_ABS_VALUE}")
            return ("int", value)
        if tok.text == "C":
            return ("C",)
        if tok.text in ("max", "min"):
            self.expect("(")
            left = self.expr_(depth + 1)
            self.expect(",")
            right = self.expr_(depth + 1)
            self.expect(")")
            return (tok.text, left, right)
        if tok.text == "(":
            node = self.expr_(depth + 1)
            self.expect(")")
            return node
        raise _error(self.expr, tok.pos, f"expected a number, C, max, min or '(', got "
                     f"{tok.text or 'end'!r}")


@dataclass(frozen=True)
class DimExpr:
    """A parsed dimension expression; evaluate it with :meth:`evaluate`."""

    text: str
    _ast: _Node

    def evaluate(self, c: int) -> int:
        """The value at slot width ``c``; ``ValueError`` on division by zero or overflow."""
        return _eval(self._ast, c, self.text)


def _eval(node: _Node, c: int, expr: str) -> int:
    kind = node[0]
    if kind == "int":
        return node[1]
    if kind == "C":
        value = c
    elif kind == "neg":
        value = -_eval(node[1], c, expr)
    else:
        a = _eval(node[1], c, expr)
        b = _eval(node[2], c, expr)
        if kind == "+":
            value = a + b
        elif kind == "-":
            value = a - b
        elif kind == "*":
            value = a * b
        elif kind == "/":
            if b == 0:
                raise _error(expr, node[3], f"division by zero at C={c}")
            value = a // b
        elif kind == "max":
            value = max(a, b)
        else:
            value = min(a, b)
    if abs(value) > MAX_ABS_VALUE:
        raise ValueError(f"dimension expression {expr!r} overflows {MAX_ABS_VALUE} at C={c}")
    return value


@lru_cache(maxsize=1024)
def parse_dim(expr: str) -> DimExpr:
    """Parse ``expr``; ``ValueError`` naming the expression and position on bad input."""
    if not isinstance(expr, str):
        raise TypeError(f"dimension expression must be a string, got {type(expr).__name__}")
    if len(expr) > MAX_EXPR_LENGTH:
        raise _error(expr[:40] + "...", MAX_EXPR_LENGTH, f"longer than {MAX_EXPR_LENGTH} chars")
    if not expr.strip():
        raise _error(expr, 0, "empty expression")
    return DimExpr(expr, _Parser(expr).parse())


def eval_dim(expr: str, c: int) -> int:
    """Parse and evaluate ``expr`` at slot width ``c``."""
    return parse_dim(expr).evaluate(c)
