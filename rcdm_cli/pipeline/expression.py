"""The arithmetic language of ``rcdm arith``: image paths combined with ``+``, ``-``,
scalar weights (``0.5*x.jpg``) and parentheses.

    expression := term (("+" | "-") term)*
    term       := factor ("*" factor)*
    factor     := NUMBER | PATH | "(" expression ")" | ("+" | "-") factor

A PATH is a run of characters without spaces, parentheses or ``*`` that is not a
number (``my-dog.jpg``, ``2.jpg``), or any text in single or double quotes
(``"my photo.jpg"``). ``+`` and ``-`` at the start of a word are operators, so
``a.jpg -b.jpg`` is a subtraction. Errors name the column where the problem is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Union

import torch

from rcdm_cli.errors import UsageError

_NUMBER = re.compile(r"^(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "path", "op", "end"
    text: str
    pos: int  # 0-based column of the token's first character


CONTEXT = 60  # characters of the expression shown on each side of a mistake


class ExpressionError(UsageError):
    def __init__(self, expression: str, pos: int, message: str):
        before, after = expression[:pos], expression[pos:]
        if len(before) > CONTEXT:  # a long expression is shown around the mistake only
            before = "..." + before[-CONTEXT:]
        if len(after) > CONTEXT:
            after = after[:CONTEXT] + "..."
        super().__init__(f"malformed expression at column {pos + 1}: {message}: {before + '>>' + after!r}")
        self.pos = pos


def tokenize(expression: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(expression)
    while i < n:
        c = expression[i]
        if c.isspace():
            i += 1
        elif c in "()*+-":
            tokens.append(Token("op", c, i))
            i += 1
        elif c in "'\"":
            end = expression.find(c, i + 1)
            if end < 0:
                raise ExpressionError(expression, i, f"unterminated quote {c}")
            if end == i + 1:
                raise ExpressionError(expression, i, "empty quoted path")
            tokens.append(Token("path", expression[i + 1 : end], i))
            i = end + 1
        else:
            j = i
            while j < n and not expression[j].isspace() and expression[j] not in "()*'\"":
                j += 1
            word = expression[i:j]
            tokens.append(Token("num" if _NUMBER.match(word) else "path", word, i))
            i = j
    tokens.append(Token("end", "", n))
    return tokens


# --- parse tree -----------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: float
    pos: int


@dataclass(frozen=True)
class Path_:
    path: str
    pos: int


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Node"
    right: "Node"
    pos: int


@dataclass(frozen=True)
class Neg:
    operand: "Node"
    pos: int


Node = Union[Num, Path_, BinOp, Neg]


# Limits that keep parsing and evaluation (both recursive) far from Python's
# recursion limit, and far above any expression a person writes; past them the
# expression is refused with the limit named.
MAX_TERMS = 256  # images and numbers in one expression
MAX_DEPTH = 64  # nested parentheses and signs


class _Parser:
    def __init__(self, expression: str):
        self.expression = expression
        self.tokens = tokenize(expression)
        self.i = 0
        self.depth = 0
        terms = [tok for tok in self.tokens if tok.kind in ("num", "path")]
        if len(terms) > MAX_TERMS:
            self.fail(f"the expression has {len(terms)} images and numbers; at most {MAX_TERMS} are allowed", terms[MAX_TERMS])

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, message: str, tok: Token | None = None):
        tok = tok or self.tok
        raise ExpressionError(self.expression, tok.pos, message)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            self.fail("the expression is empty")
        node = self.expression_()
        if self.tok.kind != "end":
            if self.tok.text == ")":
                self.fail("unmatched ')'")
            self.fail(f"expected +, - or * before {self.tok.text!r} (operators need spaces around them)")
        return node

    def expression_(self) -> Node:
        node = self.term()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.tok
            self.i += 1
            node = BinOp(op.text, node, self.term(), op.pos)
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.tok.kind == "op" and self.tok.text == "*":
            op = self.tok
            self.i += 1
            node = BinOp("*", node, self.factor(), op.pos)
        return node

    def factor(self) -> Node:
        tok = self.tok
        if tok.kind == "op" and tok.text in "+-(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail(f"parentheses and signs are nested more than {MAX_DEPTH} deep", tok)
            try:
                return self._nested(tok)
            finally:
                self.depth -= 1
        if tok.kind == "num":
            value = float(tok.text)
            if not math.isfinite(value):
                self.fail(f"the weight {tok.text} is too large to represent", tok)
            self.i += 1
            return Num(value, tok.pos)
        if tok.kind == "path":
            self.i += 1
            return Path_(tok.text, tok.pos)
        if tok.kind == "end":
            self.fail("the expression ends where an image path, a number or '(' is expected")
        self.fail(f"expected an image path, a number or '(' but found {tok.text!r}")

    def _nested(self, tok: Token) -> Node:
        """A signed factor or a parenthesised expression (``tok`` is the sign or '(')."""
        self.i += 1
        if tok.text in "+-":
            operand = self.factor()
            return Neg(operand, tok.pos) if tok.text == "-" else operand
        node = self.expression_()
        if not (self.tok.kind == "op" and self.tok.text == ")"):
            self.fail("expected ')'" if self.tok.kind != "end" else f"the '(' at column {tok.pos + 1} is never closed")
        self.i += 1
        return node


def parse(expression: str) -> Node:
    """The syntax tree, after checking that the expression is well-typed (it combines
    images with numbers as weights): every mistake is found here, before any image
    is read or encoded."""
    node = _Parser(expression).parse()
    if not torch.isfinite(evaluate(expression, node, lambda path: torch.ones(1))).all():
        raise ExpressionError(expression, 0, "the weights multiply to a number too large to represent")
    return node


def paths(node: Node) -> list[Path_]:
    """Every path in the expression, in order of appearance."""
    if isinstance(node, Path_):
        return [node]
    if isinstance(node, Neg):
        return paths(node.operand)
    if isinstance(node, BinOp):
        return paths(node.left) + paths(node.right)
    return []


def evaluate(expression: str, node: Node, lookup: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """The expression's vector; ``lookup(path)`` gives each image's representation.
    Adding a number to a vector or multiplying two vectors is an error."""

    def ev(n: Node) -> float | torch.Tensor:
        if isinstance(n, Num):
            return n.value
        if isinstance(n, Path_):
            return lookup(n.path)
        if isinstance(n, Neg):
            return -ev(n.operand)
        left, right = ev(n.left), ev(n.right)
        if n.op == "*":
            if isinstance(left, torch.Tensor) and isinstance(right, torch.Tensor):
                raise ExpressionError(expression, n.pos, "two representations cannot be multiplied (weights are numbers)")
            return left * right
        if isinstance(left, torch.Tensor) != isinstance(right, torch.Tensor):
            raise ExpressionError(expression, n.pos, f"cannot {'add' if n.op == '+' else 'subtract'} a number and a representation")
        return left + right if n.op == "+" else left - right

    result = ev(node)
    if not isinstance(result, torch.Tensor):
        raise ExpressionError(expression, 0, "the expression is a number; it must combine at least one image")
    return result


def signed_weights(node: Node) -> dict[str, float]:
    """Each path's total coefficient (for labels): ``0.5*(a - b) + a`` gives
    {a: 1.5, b: -0.5}. Call it on an expression that :func:`evaluate` accepted."""

    def walk(n: Node, scale: float, out: dict[str, float]) -> None:
        if isinstance(n, Path_):
            out[n.path] = out.get(n.path, 0.0) + scale
        elif isinstance(n, Neg):
            walk(n.operand, -scale, out)
        elif isinstance(n, BinOp):
            if n.op == "*":  # one side is a constant (evaluate() has checked)
                left = _constant(n.left)
                if left is not None:
                    walk(n.right, scale * left, out)
                else:
                    walk(n.left, scale * (_constant(n.right) or 0.0), out)
            else:
                walk(n.left, scale, out)
                walk(n.right, scale if n.op == "+" else -scale, out)

    out: dict[str, float] = {}
    walk(node, 1.0, out)
    return out


def _constant(n: Node) -> float | None:
    if isinstance(n, Num):
        return n.value
    if isinstance(n, Neg):
        inner = _constant(n.operand)
        return None if inner is None else -inner
    if isinstance(n, BinOp):
        a, b = _constant(n.left), _constant(n.right)
        if a is None or b is None:
            return None
        return a * b if n.op == "*" else a + b if n.op == "+" else a - b
    return None
