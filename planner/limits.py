"""Limits on what one statement may ask of the engine, checked before DataFusion sees it.

DataFusion plans and evaluates expressions recursively: a chain of 5,000 `+` or 2,000
`||` overflows a 2 MiB thread stack and kills the whole process (SIGSEGV), where every
client is dropped. Its SQL parser already refuses more than 50 nested parentheses, but a
flat chain of binary operators parses into a tree as deep as the chain is long. So the
depth of the expression trees is bounded here, from the tokens, with an estimate that can
only err on the high side, and DataFusion's threads get stacks big enough to hold many
times that depth (`RUST_MIN_STACK`, set before DataFusion starts any thread).

Measured here (datafusion 55, `SELECT s||s||...`): 2,000 links crash a 2 MiB stack;
5,000 run and 10,000 crash with 16 MiB (tokio's threads) or 8 MiB (the main thread).
"""

from __future__ import annotations

import os

from sqlglot.tokens import Token, TokenType

from planner.errors import InvalidInput

MAX_EXPRESSION_DEPTH = 1_000
RUST_THREAD_STACK_BYTES = 16 << 20

T = TokenType
# Binary (and chained prefix) operators by how tightly they bind, loosest first; a chain of
# one class is reset by a looser operator. Set operations chain whole queries.
_PRECEDENCE = {
    T.UNION: 0, T.INTERSECT: 0, T.EXCEPT: 0,
    T.OR: 1, T.AND: 2, T.NOT: 3,
    T.EQ: 4, T.NEQ: 4, T.LT: 4, T.LTE: 4, T.GT: 4, T.GTE: 4, T.LIKE: 4, T.ILIKE: 4,
    T.IS: 4, T.IN: 4, T.BETWEEN: 4,
    T.DPIPE: 5, T.PIPE: 5, T.AMP: 5, T.CARET: 5, T.ARROW: 5, T.DARROW: 5,
    T.PLUS: 6, T.DASH: 6, T.STAR: 7, T.SLASH: 7, T.MOD: 7, T.DCOLON: 8,
}
_CLASSES = 1 + max(_PRECEDENCE.values())
# Tokens after which a new, independent expression starts at the same level (set
# operations keep chaining across them).
_SEPARATORS = frozenset({
    T.COMMA, T.SELECT, T.FROM, T.WHERE, T.GROUP_BY, T.HAVING, T.ORDER_BY, T.LIMIT,
    T.OFFSET, T.ON, T.JOIN, T.WHEN, T.THEN, T.ELSE, T.END, T.CASE, T.VALUES, T.SET,
})


class _Level:
    """One parenthesis level: the operator chains seen in it and its deepest child."""

    def __init__(self) -> None:
        self.chain = [0] * _CLASSES  # operators of each class since a looser one
        self.longest = [0] * _CLASSES
        self.deepest_child = 0

    def operator(self, rank: int) -> None:
        for tighter in range(rank + 1, _CLASSES):
            self.chain[tighter] = 0
        self.chain[rank] += 1
        self.longest[rank] = max(self.longest[rank], self.chain[rank])

    def separator(self) -> None:
        self.chain[1:] = [0] * (_CLASSES - 1)

    def depth(self) -> int:
        return sum(self.longest) + self.deepest_child


def use_large_thread_stacks() -> None:
    """Give Rust threads (DataFusion's tokio workers) stacks that hold deep plans.

    Rust reads RUST_MIN_STACK once, when the process starts its first thread, so this
    must run before DataFusion does any work; an explicit setting is kept.
    """
    os.environ.setdefault("RUST_MIN_STACK", str(RUST_THREAD_STACK_BYTES))


def expression_depth(tokens: list[Token]) -> int:
    """An upper bound of the depth of the expression trees the tokens parse into.

    In a flat run of left-associative operators the tree is as deep as, per precedence
    class, the longest chain of that class between two looser operators, summed over the
    classes; a parenthesised operand adds its own depth plus one.
    """
    levels = [_Level()]
    for token in tokens:
        kind = token.token_type
        if kind == T.L_PAREN:
            levels.append(_Level())
        elif kind == T.R_PAREN and len(levels) > 1:
            inner = levels.pop()
            levels[-1].deepest_child = max(levels[-1].deepest_child, inner.depth() + 1)
        elif kind in _PRECEDENCE:
            levels[-1].operator(_PRECEDENCE[kind])
        elif kind in _SEPARATORS:
            levels[-1].separator()
    while len(levels) > 1:  # unbalanced: DataFusion will refuse it, but bound it anyway
        inner = levels.pop()
        levels[-1].deepest_child = max(levels[-1].deepest_child, inner.depth() + 1)
    return levels[0].depth()


def check_expression_depth(tokens: list[Token]) -> None:
    depth = expression_depth(tokens)
    if depth > MAX_EXPRESSION_DEPTH:
        raise InvalidInput(
            f"the statement nests expressions about {depth} levels deep; the limit is "
            f"{MAX_EXPRESSION_DEPTH}. Split long chains of operators (for example use IN (...) "
            "instead of many ORs, or sum a column instead of adding many terms)")
